// The CUDA backend (cuda_backend.cuh): construction, memory, copies,
// events, graphs, and the module's entry point.
#include "kernels/cuda/cuda_backend.cuh"

namespace tinygpt::cuda {

template <class T>
CudaBackend<T>::CudaBackend(DType dtype, int device) : dtype_(dtype) {
  TG_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop;
  TG_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  device_name_ = prop.name;
  num_sms_ = prop.multiProcessorCount;
  PdlEnabled() = prop.major >= 9 && EnvOn("TINYGPT_PDL");
  TG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  gemm_ = std::make_unique<LtGemm>(CudaType<T>(), sizeof(T), stream_);
}

template <class T>
CudaBackend<T>::~CudaBackend() {
  collective_.reset();  // first: NCCL's streams and kernels end before the memory they use goes
  cudaStreamSynchronize(stream_);
  op_times_.Print();
  for (void* p : {scratch_, static_cast<void*>(ce_loss_), static_cast<void*>(ce_hit_), static_cast<void*>(sumsq_)})
    if (p) cudaFree(p);
  gemm_.reset();
  if (split_workspace_) cudaFree(split_workspace_);
  if (split_counters_) cudaFree(split_counters_);
  for (void* p : retired_) cudaFree(p);
  for (auto& [host, dev] : layer_tables_) cudaFree(dev);
  if (step_barrier_) cudaFree(step_barrier_);
  cudaStreamDestroy(stream_);
}

template <class T>
absl::Status CudaBackend<T>::SupportsModel(int head_dim) const {
  if (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128) return absl::OkStatus();
  return absl::InvalidArgumentError("CUDA backend: head_dim " + std::to_string(head_dim) +
                                    " is not supported (16, 32, 64, 128)");
}

template <class T>
void* CudaBackend<T>::Alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    return nullptr;
  }
  TG_CUDA_CHECK(cudaMemsetAsync(p, 0, std::max<size_t>(bytes, 16), stream_));
  return p;
}

template <class T>
size_t CudaBackend<T>::AvailableBytes() const {
  size_t free_bytes = 0, total = 0;
  TG_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return free_bytes;
}

template <class T>
void CudaBackend<T>::Free(void* p) {
  cudaStreamSynchronize(stream_);
  cudaFree(p);
}

template <class T>
void CudaBackend<T>::CopyToDevice(void* dst, const void* src, size_t bytes) {
  TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
}

template <class T>
void CudaBackend<T>::CopyToHost(void* dst, const void* src, size_t bytes) {
  TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <class T>
void CudaBackend<T>::UploadFloats(void* dst, const float* src, size_t n) {
  std::vector<T> tmp(n);
  for (size_t i = 0; i < n; ++i) tmp[i] = T(src[i]);
  // On our stream (non-blocking, so unordered with the legacy default
  // stream): after the Alloc's memset, before any use.
  TG_CUDA_CHECK(cudaMemcpyAsync(dst, tmp.data(), n * sizeof(T), cudaMemcpyHostToDevice, stream_));
  TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <class T>
void CudaBackend<T>::DownloadFloats(float* dst, const void* src, size_t n) {
  std::vector<T> tmp(n);
  CopyToHost(tmp.data(), src, n * sizeof(T));
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(tmp[i]);
}

template <class T>
void* CudaBackend<T>::AllocHost(size_t bytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, std::max<size_t>(bytes, 16), cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  std::memset(p, 0, std::max<size_t>(bytes, 16));
  return p;
}

template <class T>
void CudaBackend<T>::FreeHost(void* p) {
  if (!p) return;
  cudaStreamSynchronize(stream_);
  cudaFreeHost(p);
}

template <class T>
void CudaBackend<T>::CopyToHostAsync(void* dst, const void* src, size_t bytes) {
  TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
}

template <class T>
void CudaBackend<T>::HostToFloats(const void* src, float* dst, size_t n) {
  const T* s = static_cast<const T*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}

template <class T>
void* CudaBackend<T>::CreateEvent() {
  cudaEvent_t e;
  TG_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

template <class T>
double CudaBackend<T>::EventSeconds(void* start, void* end) {
  float ms = 0.f;
  TG_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return ms * 1e-3;
}

template <class T>
bool CudaBackend<T>::BeginCapture() {
  if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}

template <class T>
void* CudaBackend<T>::EndCapture() {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  if (end != cudaSuccess || !graph) {
    std::fprintf(stderr, "CUDA graph capture failed: %s\n", cudaGetErrorString(end));
    cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    return nullptr;
  }
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    std::fprintf(stderr, "CUDA graph instantiation failed: %s\n", cudaGetErrorString(inst));
    cudaGetLastError();
    return nullptr;
  }
  return exec;
}

template <class T>
void CudaBackend<T>::DestroyGraph(void* g) {
  cudaStreamSynchronize(stream_);
  cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g));
}

template <class T>
void CudaBackend<T>::Synchronize() {
  TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
  op_times_.OnSynchronize();
  // TINYGPT_CUDA_PROFILE_FROM_SYNC=N: a profiler run with
  // --profile-from-start off sees only what follows the N-th Synchronize()
  // (the engine bench's measured steps, not the GEMM tuning before them).
  static const long profile_from = EnvLong("TINYGPT_CUDA_PROFILE_FROM_SYNC", 0);
  if (profile_from > 0 && ++syncs_ == profile_from) TG_CUDA_CHECK(cudaProfilerStart());
}

template <class T>
void* CudaBackend<T>::Scratch(size_t bytes) {
  if (bytes > scratch_bytes_) {
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (scratch_) TG_CUDA_CHECK(cudaFree(scratch_));
    TG_CUDA_CHECK(cudaMalloc(&scratch_, bytes));
    scratch_bytes_ = bytes;
  }
  return scratch_;
}

template <class T>
bool CudaBackend<T>::SplitBuffersHold(size_t bytes, int counters) const {
  return bytes <= split_bytes_ && counters <= split_counters_cap_;
}

template <class T>
void CudaBackend<T>::GrowSplitWorkspace(size_t bytes) {
  if (bytes <= split_bytes_) return;
  if (split_workspace_) retired_.push_back(split_workspace_);
  TG_CUDA_CHECK(cudaMalloc(&split_workspace_, bytes));
  split_bytes_ = bytes;
  ++counters_.workspace_growths;
}

template <class T>
void CudaBackend<T>::GrowSplitCounters(int count) {
  if (count <= split_counters_cap_) return;
  if (split_counters_) retired_.push_back(split_counters_);
  TG_CUDA_CHECK(cudaMalloc(&split_counters_, count * sizeof(int)));
  TG_CUDA_CHECK(cudaMemsetAsync(split_counters_, 0, count * sizeof(int), stream_));
  split_counters_cap_ = count;
  ++counters_.workspace_growths;
}

// The three precisions' classes (each .cu file instantiates the members it defines).
template class CudaBackend<__nv_bfloat16>;
template class CudaBackend<__half>;
template class CudaBackend<float>;

}  // namespace tinygpt::cuda


// The module's one entry point (see kernels/backend.h).
extern "C" __attribute__((visibility("default"))) tinygpt::Backend* tinygpt_create_cuda_backend_v2(const char* dtype, int device,
                                                                                                char* error, size_t error_len) {
  auto fail = [&](const std::string& msg) -> tinygpt::Backend* {
    std::snprintf(error, error_len, "%s", msg.c_str());
    return nullptr;
  };
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    return fail(std::string("no CUDA device (") + (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + ")");
  if (device < 0 || device >= count)
    return fail("no CUDA device " + std::to_string(device) + " (this machine has " + std::to_string(count) + ")");
  const std::string d = dtype ? dtype : "bf16";
  if (d == "bf16") return new tinygpt::cuda::CudaBackend<__nv_bfloat16>(tinygpt::DType::kBF16, device);
  if (d == "f16" || d == "fp16") return new tinygpt::cuda::CudaBackend<__half>(tinygpt::DType::kF16, device);
  // fp32: training's reference precision (no paged attention kernel).
  if (d == "f32" || d == "fp32") return new tinygpt::cuda::CudaBackend<float>(tinygpt::DType::kF32, device);
  return fail("unsupported dtype '" + d + "' (bf16, f16, f32)");
}
