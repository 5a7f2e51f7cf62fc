# The row-major GEMMs of _dense, for other kernel modules (_conv): _dense._gemm_entries() returns
# the addresses of functions of these types, which run on _dense's current GEMM BLAS (dlfast's own
# single-thread OpenBLAS, or SciPy's, pinned to one thread; dlf_sgemm for float32 where chosen).
# Call pin() once per kernel call, before the GEMMs (it installs SciPy's BLAS if none was, and
# re-pins the BLAS to one thread).
#
#   gemm:     C(m, n)  = op(A)(m, k) @ op(B)(k, n)     (ta/tb 'N' or 'T'; lda/ldb/ldc: row lengths)
#   gemm_acc: C(m, n) += op(A)(m, k) @ op(B)(k, n)     (always the BLAS GEMM)
# Each call is single-threaded: callers share out fixed blocks to OpenMP threads themselves.

ctypedef void (*gemm_f32_t)(char, char, int, int, int, const float*, int, const float*, int,
                            float*, int) noexcept nogil
ctypedef void (*gemm_f64_t)(char, char, int, int, int, const double*, int, const double*, int,
                            double*, int) noexcept nogil
ctypedef void (*pin_t)() noexcept nogil
