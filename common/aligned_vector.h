// std::vector whose storage starts on a cache-line (64-byte) boundary. With
// rows of activations a multiple of 64 bytes long, a 16-float attention head
// is then exactly one cache line of every row: threads working on different
// heads never share a line, and reading one head never drags in half of the
// next (malloc's large blocks start 16 bytes past a page).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace tinygpt {

template <class T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <class T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace tinygpt
