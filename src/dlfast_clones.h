/* DLF_CLONES: compile a C loop for AVX-512, AVX2 and baseline x86-64; the loader picks one per
   process from the CPU (GCC >= 11 target_clones, glibc ifunc). Elsewhere: one baseline build.
   Files using it switch floating-point contraction off (no FMA), so every clone gives the same
   bits: only the vector width differs. */
#ifndef DLFAST_CLONES_H
#define DLFAST_CLONES_H
#if defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__) && defined(__x86_64__) \
    && defined(__linux__) && defined(__GLIBC__)
#define DLF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DLF_CLONES
#endif
#endif
