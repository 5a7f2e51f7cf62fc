/* Ops of the compiled backend (dlfast.kernels.OPS; the training engine, dlfast._engine).

   An op is a layer's forward and backward kernels bound to fixed arrays: a struct that starts
   with dlf_op and holds the C pointers of its arrays (acquired once by the op's Python object in
   the layer's kernel module, which keeps them acquired, so they cannot be resized while the op
   lives). _program.pyx runs a training step's ops with no Python between the kernels:

     out = fwd(op, x)             x: the step's input or an earlier op's out
     dx  = bwd(op, x, dout)       dout: a later op's dx, a loss's dlogits or the heads' sum

   fwd and bwd return 0 or a negative error code (DLF_OP_ERR_*); neither needs the GIL. An op
   writes out (fwd), dx (bwd, when not NULL) and its other outputs (gradients, statistics). */
#ifndef DLFAST_OP_H
#define DLFAST_OP_H
#include <stdint.h>

#define DLF_OP_ERR_LABELS (-1)     /* a label outside [0, classes) */
#define DLF_OP_ERR_MEMORY (-2)
#define DLF_OP_ERR_PYTHON (-3)     /* a Python op raised (the program re-raises it) */

typedef struct dlf_op dlf_op;
struct dlf_op {
    int (*fwd)(dlf_op* op, const void* x);
    int (*bwd)(dlf_op* op, const void* x, const void* dout);
    void* out;      /* forward output */
    void* dx;       /* gradient w.r.t. the input; NULL: not computed */
};

/* A loss of logits and labels (int64, ``n`` rows in [0, classes), filled by the program before
   each step): fwd gives the loss, bwd writes dlogits = weight * dL/dlogits. */
typedef struct dlf_loss_op dlf_loss_op;
struct dlf_loss_op {
    int (*fwd)(dlf_loss_op* op, const void* logits, double* loss);
    int (*bwd)(dlf_loss_op* op);
    int64_t* labels;
    void* dlogits;
    int64_t n, classes;
    double weight;
};
#endif
