# Thread policy shared by every compiled module (textually included: each module keeps its own copy
# of the setting; dlfast._config.set_num_threads() pushes the one decision to all of them).
#
#   threads(work) = 1                                   if work < min_work (no parallel region)
#                 = requested                           if set_num_threads(n) was called (n >= 1)
#                 = omp_get_max_threads()               otherwise (honours OMP_NUM_THREADS, threadpoolctl)

cdef extern from "dlfast_omp.h":
    int dlfast_omp_max_threads() noexcept nogil
    int dlfast_omp_version() noexcept nogil
    int dlfast_omp_id() noexcept nogil
    int dlfast_omp_team() noexcept nogil
    void dlfast_omp_barrier() noexcept nogil
    int DLFAST_HAVE_OPENMP

# min_work: elements of work below which a kernel stays on the calling thread. Measured once per
# machine at import (dlfast/_backends/_tuning.py) and pushed to every module by _set_min_work,
# like the thread count; it changes thread counts only, never results.
cdef Py_ssize_t _min_work = 32768
cdef int _requested_threads = 0


def _set_min_work(Py_ssize_t n):
    """Set this module's parallel threshold (elements of work; values < 1 count as 1)."""
    global _min_work
    _min_work = n if n > 0 else 1


def _get_min_work():
    return _min_work


def _set_num_threads(int n):
    """Set the thread count used by this module's kernels (0 = OpenMP's current maximum)."""
    global _requested_threads
    _requested_threads = n if n > 0 else 0


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    if work < _min_work:
        return 1
    if _requested_threads > 0:
        return _requested_threads
    return dlfast_omp_max_threads()
