/* OpenMP is optional at build time: without it these fall back to one thread. */
#ifndef DLFAST_OMP_H
#define DLFAST_OMP_H
#ifdef _OPENMP
#include <omp.h>
#define DLFAST_HAVE_OPENMP 1
static int dlfast_omp_max_threads(void) { return omp_get_max_threads(); }
static int dlfast_omp_version(void) { return _OPENMP; }
#else
#define DLFAST_HAVE_OPENMP 0
static int dlfast_omp_max_threads(void) { return 1; }
static int dlfast_omp_version(void) { return 0; }
#endif
#endif
