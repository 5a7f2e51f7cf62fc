/* OpenMP is optional at build time: without it these fall back to one thread. */
#ifndef DLFAST_OMP_H
#define DLFAST_OMP_H
#ifdef _OPENMP
#include <omp.h>
#define DLFAST_HAVE_OPENMP 1
static int dlfast_omp_max_threads(void) { return omp_get_max_threads(); }
static int dlfast_omp_version(void) { return _OPENMP; }
/* Inside a parallel region: this thread's number, the team's size, a barrier of the team. */
static inline int dlfast_omp_id(void) { return omp_get_thread_num(); }
static inline int dlfast_omp_team(void) { return omp_get_num_threads(); }
static inline void dlfast_omp_barrier(void) { _Pragma("omp barrier") }
#else
#define DLFAST_HAVE_OPENMP 0
static int dlfast_omp_max_threads(void) { return 1; }
static int dlfast_omp_version(void) { return 0; }
static inline int dlfast_omp_id(void) { return 0; }
static inline int dlfast_omp_team(void) { return 1; }
static inline void dlfast_omp_barrier(void) { }
#endif
#endif
