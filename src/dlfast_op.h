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

#define DLF_OP_ERR_LABELS (-1)     /* a label outside [0, width) */
#define DLF_OP_ERR_MEMORY (-2)
#define DLF_OP_ERR_PYTHON (-3)     /* a Python op raised (the program re-raises it) */

typedef struct dlf_op dlf_op;
struct dlf_op {
    int (*fwd)(dlf_op* op, const void* x);
    int (*bwd)(dlf_op* op, const void* x, const void* dout);
    void* out;      /* forward output */
    void* dx;       /* gradient w.r.t. the input; NULL: not computed */
};

/* A loss of a head's output y (N, width) and this step's targets, which the program checks and
   copies into the op's buffers before each step (nothing runs on a bad target): fwd gives the
   loss L, bwd writes dlogits = weight * dL/dy. Exactly one of labels and targets is non-NULL.
   With sample weights w, L = sum_i w_i l_i / sum_i w_i (dlfast.kernels: the value losses). */
typedef struct dlf_loss_op dlf_loss_op;
struct dlf_loss_op {
    int (*fwd)(dlf_loss_op* op, const void* y, double* loss);
    int (*bwd)(dlf_loss_op* op, const void* y);
    int64_t* labels;        /* label losses: (n,) class indices in [0, width) */
    void* targets;          /* value losses: (n, width) of y's dtype, C order */
    double* sw_buf;         /* (n,) float64: the op's sample-weight buffer */
    const double* sw;       /* this step's sample weights: sw_buf, or NULL (unweighted) */
    void* dlogits;          /* (n, width) of y's dtype */
    int64_t n, width;       /* rows; classes (labels) or outputs per row (values) */
    int unit;               /* value losses: every target must lie in [0, 1] (else finite) */
    double weight;          /* the head's loss weight */
};
#endif
