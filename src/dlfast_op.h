/* Bound layer operations of the compiled backend (dlfast._bound, "compiled chain").

   A layer bound for repeated training steps gives an op: a struct that starts with dlf_op and
   holds the C pointers of its arrays (acquired once, at bind time, by the op's Python object in
   the layer's kernel module). _step.pyx runs the chain x -> op_0 -> ... -> op_last -> loss, then
   the loss's gradient back through the ops, with no Python between the kernels:

     out_k = fwd(op_k, in_k),         in_0 = the step's x, in_k = op_{k-1}->out
     dx_k  = bwd(op_k, in_k, dout_k), dout_last = the loss's dlogits, dout_k = op_{k+1}->dx

   fwd and bwd return 0 or a negative error code (DLF_OP_ERR_*); neither needs the GIL. Arrays are
   the layer's own buffers: an op writes out (fwd), dx (bwd, when not NULL) and its gradients. */
#ifndef DLFAST_OP_H
#define DLFAST_OP_H
#include <stdint.h>

#define DLF_OP_ERR_LABELS (-1)     /* a label outside [0, classes) */
#define DLF_OP_ERR_MEMORY (-2)

typedef struct dlf_op dlf_op;
struct dlf_op {
    int (*fwd)(dlf_op* op, const void* x);
    int (*bwd)(dlf_op* op, const void* x, const void* dout);
    void* out;      /* forward output */
    void* dx;       /* gradient w.r.t. the input; NULL: not computed */
};

/* The loss: softmax + mean cross-entropy of labels (op->labels, int64, filled per step). */
typedef struct dlf_loss_op dlf_loss_op;
struct dlf_loss_op {
    int (*fwd)(dlf_loss_op* op, const void* logits, double* loss);
    int (*bwd)(dlf_loss_op* op);
    int64_t* labels;
    void* dlogits;
};
#endif
