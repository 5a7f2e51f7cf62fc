"""Build and runtime facts of the compiled backend (OpenMP, thread policy)."""
include "_parallel.pxi"


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(DLFAST_HAVE_OPENMP)


def openmp_version():
    """The _OPENMP date macro the kernels were compiled with (0 without OpenMP)."""
    return dlfast_omp_version()


def max_threads():
    """omp_get_max_threads() now (1 without OpenMP)."""
    return dlfast_omp_max_threads()


def threads_for(Py_ssize_t work):
    """How many threads a kernel would use for `work` elements under the current policy."""
    return _threads(work)


cdef extern from "dlfast_cache.h" nogil:
    long dlf_cache_bytes(int level, long fallback)


def cache_bytes(int level):
    """Bytes of this machine's level-1 data (1) or level-2 (2) cache as the kernels see it
    (sysconf); 0 where the system does not say."""
    return dlf_cache_bytes(level, 0)
