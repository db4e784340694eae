
abB
 J
JendZr1