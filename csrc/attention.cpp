// Fused CPU attention (flash-style): lmforge::attention and lmforge::attention_backward kernels,
// their tiled forward and backward, and the autograd kernel; decoding is attention_decode.cpp's.
#include "attention.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

// The Fortran BLAS entry points that PyTorch's x86 wheels export (MKL): one tile product per
// call without the dispatcher overhead of at::mm, which would cost more than the tile itself.
// Declared weak so that a torch without them still loads the extension (the op then says why).
extern "C" {
__attribute__((weak)) void sgemm_(const char* transa, const char* transb, const int* m,
                                  const int* n, const int* k, const float* alpha, const float* a,
                                  const int* lda, const float* b, const int* ldb,
                                  const float* beta, float* c, const int* ldc);
__attribute__((weak)) void dgemm_(const char* transa, const char* transb, const int* m,
                                  const int* n, const int* k, const double* alpha,
                                  const double* a, const int* lda, const double* b,
                                  const int* ldb, const double* beta, double* c, const int* ldc);
// MKL's bf16 x bf16 -> fp32 product (ATen's own bf16 gemm is not exported to extensions).
__attribute__((weak)) void gemm_bf16bf16f32_(const char* transa, const char* transb, const int* m,
                                             const int* n, const int* k, const float* alpha,
                                             const at::BFloat16* a, const int* lda,
                                             const at::BFloat16* b, const int* ldb,
                                             const float* beta, float* c, const int* ldc);
// MKL's Fortran-style (by pointer) entry point, the one the statically linked MKL exports.
__attribute__((weak)) int mkl_set_num_threads_local_(const int* n);
}

// Each at::parallel_for task multiplies small tiles, and the cores are already busy with tasks:
// MKL threading each tile itself only oversubscribes them (measured: a (8,4,256,32) forward took
// 1.5 s instead of 3 ms on a loaded 2-core machine). Tasks run MKL on one thread and restore the
// caller's setting after; without MKL this does nothing.
class SequentialBlas {
 public:
  SequentialBlas() {
    const int one = 1;
    if (mkl_set_num_threads_local_) previous_ = mkl_set_num_threads_local_(&one);
  }
  ~SequentialBlas() {
    if (mkl_set_num_threads_local_) mkl_set_num_threads_local_(&previous_);
  }

 private:
  int previous_ = 0;
};

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, bool causal, float scale, "
        "Tensor? key_padding_mask) -> (Tensor out, Tensor lse)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, bool causal, float scale, Tensor? key_padding_mask) -> (Tensor, Tensor, Tensor)");
}

namespace {

using namespace lmforge::attention;

// Query rows and keys per tile: a 64 x 256 score tile (64 KiB in fp32) stays in L2.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 256;

void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
               const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
               const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// bf16 inputs, float products and sums. Measured here (AMD, AVX-512 BF16) MKL runs it at the
// fp32 rate, about 100 GFLOP/s per core on attention tiles; the gain is half the memory traffic.
void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const at::BFloat16* a, int lda,
               const at::BFloat16* b, int ldb, float beta, float* c, int ldc) {
  gemm_bf16bf16f32_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major C (m x n) = alpha * op(A) op(B) + beta * C, where op(A) is m x k and `ta` means A is
// stored k x m. BLAS is column-major, so this computes C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Acc<T> alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, Acc<T> beta, Acc<T>* c, int64_t ldc) {
  blas_gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// A tile of n accumulation-type values as a gemm operand of the input type: itself when the
// types agree, else rounded into `buffer` (bf16 probabilities, as flash-attention rounds them).
template <typename T>
const T* operand(const Acc<T>* x, int64_t n, T* buffer) {
  if constexpr (std::is_same_v<T, Acc<T>>) {
    return x;
  } else {
    at::vec::convert(x, buffer, n);
    return buffer;
  }
}

// The last key query i may see: with a KV cache (Tq < Tk) query i is key Tk - Tq + i.
inline int64_t last_key(bool causal, int64_t i, int64_t tq, int64_t tk) {
  return causal ? tk - tq + i : tk - 1;
}

// Sets the masked scores of one row of a tile (keys j0 .. j0 + n - 1) to -inf.
template <typename T>
void mask_row(T* s, int64_t n, int64_t j0, int64_t last, const bool* pad) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t c = std::max<int64_t>(last + 1 - j0, 0); c < n; ++c) s[c] = neg_inf;
  if (pad) {
    for (int64_t c = 0; c < n; ++c) {
      if (pad[j0 + c]) s[c] = neg_inf;
    }
  }
}

Shapes check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& pad) {
  TORCH_CHECK(sgemm_ && dgemm_ && gemm_bf16bf16f32_,
              "lmforge::attention: this torch build exports no MKL BLAS (sgemm_, dgemm_, "
              "gemm_bf16bf16f32_)");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "lmforge::attention: q, k, v must be (B, H, T, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "lmforge::attention: q, k, v must share a dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble ||
                  q.scalar_type() == at::kBFloat16,
              "lmforge::attention: the CPU kernel takes float32, float64 or bfloat16, found ",
              q.scalar_type());
  const Shapes s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  TORCH_CHECK(k.size(0) == s.b && v.size(0) == s.b && k.size(1) == s.h && v.size(1) == s.h,
              "lmforge::attention: q, k, v batch and head sizes differ");
  TORCH_CHECK(k.size(3) == s.d && v.size(2) == s.tk,
              "lmforge::attention: k must be (B, H, Tk, D) and v (B, H, Tk, Dv)");
  TORCH_CHECK(s.d > 0 && s.dv > 0, "lmforge::attention: head dims must be positive");
  if (pad) {
    TORCH_CHECK(pad->scalar_type() == at::kBool && pad->dim() == 2 && pad->size(0) == s.b &&
                    pad->size(1) == s.tk,
                "lmforge::attention: key_padding_mask must be (B, Tk) bool");
  }
  return s;
}

template <typename T>
void forward_kernel(const Shapes& sh, const Rows& q, const Rows& k, const Rows& v,
                    const bool* pad, bool causal, Acc<T> scale, T* out, Acc<T>* lse) {
  using A = Acc<T>;
  const int64_t q_blocks = (sh.tq + kQueryBlock - 1) / kQueryBlock;
  const A neg_inf = -std::numeric_limits<A>::infinity();
  const T* qp = q.t.data_ptr<T>();
  const T* kp = k.t.data_ptr<T>();
  const T* vp = v.t.data_ptr<T>();
  at::parallel_for(0, sh.b * sh.h * q_blocks, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlas sequential;
    std::vector<A> scores(kQueryBlock * kKeyBlock), acc(kQueryBlock * sh.dv);
    std::vector<A> row_max(kQueryBlock), row_sum(kQueryBlock);
    std::vector<T> rounded(std::is_same_v<T, A> ? 0 : kQueryBlock * kKeyBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, b = bh / sh.h, h = bh % sh.h;
      const int64_t i0 = (task % q_blocks) * kQueryBlock;
      const int64_t m = std::min(kQueryBlock, sh.tq - i0);
      const T* qb = qp + b * q.sb + h * q.sh + i0 * q.st;
      const T* kb = kp + b * k.sb + h * k.sh;
      const T* vb = vp + b * v.sb + h * v.sh;
      const bool* padb = pad ? pad + b * sh.tk : nullptr;
      std::fill(row_max.begin(), row_max.end(), neg_inf);
      std::fill(row_sum.begin(), row_sum.end(), A(0));
      std::fill(acc.begin(), acc.end(), A(0));
      // Keys past the block's last visible key contribute nothing: stop the loop there.
      const int64_t keys = std::min(sh.tk, last_key(causal, i0 + m - 1, sh.tq, sh.tk) + 1);
      for (int64_t j0 = 0; j0 < keys; j0 += kKeyBlock) {
        const int64_t n = std::min(kKeyBlock, keys - j0);
        gemm<T>(false, true, m, n, sh.d, scale, qb, q.st, kb + j0 * k.st, k.st, A(0),
                scores.data(), n);
        for (int64_t r = 0; r < m; ++r) {
          A* s = scores.data() + r * n;
          mask_row(s, n, j0, last_key(causal, i0 + r, sh.tq, sh.tk), padb);
          const A tile_max = at::vec::reduce_all<A>(
              [](Vectorized<A>& x, Vectorized<A>& y) { return at::vec::maximum(x, y); }, s, n);
          const A new_max = std::max(row_max[r], tile_max);
          // A row with every key masked so far keeps max -inf; shift by 0 so exp gives 0, not NaN.
          const A shift = new_max == neg_inf ? A(0) : new_max;
          const A correction = std::exp(row_max[r] - shift);
          row_sum[r] = row_sum[r] * correction + exp_row(s, n, shift);
          row_max[r] = new_max;
          if (correction != A(1)) {
            A* a = acc.data() + r * sh.dv;
            at::vec::map([correction](Vectorized<A> x) { return x * Vectorized<A>(correction); },
                         a, a, sh.dv);
          }
        }
        gemm<T>(false, false, m, sh.dv, n, A(1), operand<T>(scores.data(), m * n, rounded.data()),
                n, vb + j0 * v.st, v.st, A(1), acc.data(), sh.dv);
      }
      T* ob = out + (bh * sh.tq + i0) * sh.dv;
      A* lb = lse + bh * sh.tq + i0;
      for (int64_t r = 0; r < m; ++r) {
        // A row whose keys are all masked outputs zeros with lse 0: finite, and the backward
        // masks the same scores to -inf, so its probabilities stay 0.
        const A l = row_sum[r];
        const A inv = l > A(0) ? A(1) / l : A(0);
        A* a = acc.data() + r * sh.dv;
        at::vec::map([inv](Vectorized<A> x) { return x * Vectorized<A>(inv); }, a, a, sh.dv);
        at::vec::convert(a, ob + r * sh.dv, sh.dv);
        lb[r] = l > A(0) ? row_max[r] + std::log(l) : A(0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, bool causal,
                                                 double scale,
                                                 const std::optional<at::Tensor>& pad_in) {
  const Shapes sh = check_inputs(q_in, k_in, v_in, pad_in);
  const Rows q = rows(q_in), k = rows(k_in), v = rows(v_in);
  at::Tensor pad = pad_in ? pad_in->contiguous() : at::Tensor();
  const bool* pad_data = pad.defined() ? pad.data_ptr<bool>() : nullptr;
  at::Tensor out = at::empty({sh.b, sh.h, sh.tq, sh.dv}, q_in.options());
  at::Tensor lse = at::empty({sh.b, sh.h, sh.tq},
                             q_in.options().dtype(at::toOpMathType(q_in.scalar_type())));
  // One query row (decoding) sees every key, causal or not: no tile to multiply.
  if (sh.tq == 1) {
    decode(sh, q, k, v, pad_data, scale, out, lse);
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q_in.scalar_type(), "lmforge::attention", [&] {
    using A = Acc<scalar_t>;
    forward_kernel<scalar_t>(sh, q, k, v, pad_data, causal, static_cast<A>(scale),
                             out.data_ptr<scalar_t>(), lse.data_ptr<A>());
  });
  return {out, lse};
}

// Flash-attention backward: recomputes each probability tile from the saved log-sum-exp, so no
// Tq x Tk matrix is kept. One task per (batch, head) owns that head's dK and dV rows.
template <typename T>
void backward_kernel(const Shapes& sh, const Rows& go, const Rows& q, const Rows& k,
                     const Rows& v, const Rows& o, const Acc<T>* lse, const bool* pad,
                     bool causal, Acc<T> scale, Acc<T>* dq, Acc<T>* dk, Acc<T>* dv) {
  using A = Acc<T>;
  using Vec = Vectorized<A>;
  at::parallel_for(0, sh.b * sh.h, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlas sequential;
    std::vector<A> probs(kQueryBlock * kKeyBlock), dprobs(kQueryBlock * kKeyBlock);
    std::vector<A> delta(kQueryBlock);
    std::vector<T> rounded(std::is_same_v<T, A> ? 0 : kQueryBlock * kKeyBlock);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / sh.h, h = bh % sh.h;
      const T* qh = q.t.data_ptr<T>() + b * q.sb + h * q.sh;
      const T* kh = k.t.data_ptr<T>() + b * k.sb + h * k.sh;
      const T* vh = v.t.data_ptr<T>() + b * v.sb + h * v.sh;
      const T* oh = o.t.data_ptr<T>() + b * o.sb + h * o.sh;
      const T* goh = go.t.data_ptr<T>() + b * go.sb + h * go.sh;
      const A* lh = lse + bh * sh.tq;
      const bool* padb = pad ? pad + b * sh.tk : nullptr;
      A* dqh = dq + bh * sh.tq * sh.d;
      A* dkh = dk + bh * sh.tk * sh.d;
      A* dvh = dv + bh * sh.tk * sh.dv;
      for (int64_t i0 = 0; i0 < sh.tq; i0 += kQueryBlock) {
        const int64_t m = std::min(kQueryBlock, sh.tq - i0);
        // delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, the softmax backward's row term.
        for (int64_t r = 0; r < m; ++r) {
          delta[r] = at::vec::map2_reduce_all<T>([](Vec x, Vec y) { return x * y; },
                                                 [](Vec x, Vec y) { return x + y; },
                                                 goh + (i0 + r) * go.st, oh + (i0 + r) * o.st,
                                                 sh.dv);
        }
        const T* qb = qh + i0 * q.st;
        const T* gob = goh + i0 * go.st;
        const int64_t keys = std::min(sh.tk, last_key(causal, i0 + m - 1, sh.tq, sh.tk) + 1);
        for (int64_t j0 = 0; j0 < keys; j0 += kKeyBlock) {
          const int64_t n = std::min(kKeyBlock, keys - j0);
          gemm<T>(false, true, m, n, sh.d, scale, qb, q.st, kh + j0 * k.st, k.st, A(0),
                  probs.data(), n);
          for (int64_t r = 0; r < m; ++r) {
            A* p = probs.data() + r * n;
            mask_row(p, n, j0, last_key(causal, i0 + r, sh.tq, sh.tk), padb);
            exp_row(p, n, lh[i0 + r]);
          }
          // dV_j += P^T dO_i;  dP = dO_i V_j^T
          gemm<T>(true, false, n, sh.dv, m, A(1), operand<T>(probs.data(), m * n, rounded.data()),
                  n, gob, go.st, A(1), dvh + j0 * sh.dv, sh.dv);
          gemm<T>(false, true, m, n, sh.dv, A(1), gob, go.st, vh + j0 * v.st, v.st, A(0),
                  dprobs.data(), n);
          // dS = P * (dP - delta), written over dP.
          for (int64_t r = 0; r < m; ++r) {
            const Vec dr(delta[r]);
            at::vec::map2([dr](Vec p, Vec dp) { return p * (dp - dr); }, dprobs.data() + r * n,
                          probs.data() + r * n, dprobs.data() + r * n, n);
          }
          // dQ_i += scale dS K_j;  dK_j += scale dS^T Q_i
          const T* ds = operand<T>(dprobs.data(), m * n, rounded.data());
          gemm<T>(false, false, m, sh.d, n, scale, ds, n, kh + j0 * k.st, k.st, A(1),
                  dqh + i0 * sh.d, sh.d);
          gemm<T>(true, false, n, sh.d, m, scale, ds, n, qb, q.st, A(1), dkh + j0 * sh.d, sh.d);
        }
      }
    }
  });
}

// Gradients come back in the inputs' dtype; bf16 ones accumulate in float and are rounded once.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out, const at::Tensor& lse_in, bool causal,
    double scale, const std::optional<at::Tensor>& pad_in) {
  const Shapes sh = check_inputs(q_in, k_in, v_in, pad_in);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.size(0) == sh.b && out.size(1) == sh.h &&
                  out.size(2) == sh.tq && out.size(3) == sh.dv,
              "lmforge::attention_backward: grad_out and out must be (B, H, Tq, Dv)");
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == sh.b && lse_in.size(1) == sh.h &&
                  lse_in.size(2) == sh.tq,
              "lmforge::attention_backward: lse must be (B, H, Tq)");
  const at::ScalarType dtype = q_in.scalar_type();
  const at::ScalarType acc_dtype = at::toOpMathType(dtype);
  // grad_out is often an expanded (stride 0) tensor: rows() copies such layouts.
  const Rows go = rows(grad_out.to(dtype)), q = rows(q_in), k = rows(k_in), v = rows(v_in),
             o = rows(out.to(dtype));
  at::Tensor lse = lse_in.to(acc_dtype).contiguous();
  at::Tensor pad = pad_in ? pad_in->contiguous() : at::Tensor();
  // The gradients accumulate tile by tile, so they start at zero.
  const auto acc_options = q_in.options().dtype(acc_dtype);
  at::Tensor dq = at::zeros({sh.b, sh.h, sh.tq, sh.d}, acc_options);
  at::Tensor dk = at::zeros({sh.b, sh.h, sh.tk, sh.d}, acc_options);
  at::Tensor dv = at::zeros({sh.b, sh.h, sh.tk, sh.dv}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "lmforge::attention_backward", [&] {
    using A = Acc<scalar_t>;
    backward_kernel<scalar_t>(sh, go, q, k, v, o, lse.data_ptr<A>(),
                              pad.defined() ? pad.data_ptr<bool>() : nullptr, causal,
                              static_cast<A>(scale), dq.data_ptr<A>(), dk.data_ptr<A>(),
                              dv.data_ptr<A>());
  });
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype)};
}

// lmforge::attention below the autograd key (the CPU kernel, or a fake one when tracing).
const c10::TypedOperatorHandle<decltype(attention_cpu)>& attention_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lmforge::attention", "")
                             .typed<decltype(attention_cpu)>();
  return op;
}

// Autograd in C++ rather than Python: a Python autograd kernel cost about 4 us per call, which
// is most of a decoding step's budget (measured: 6.4 us per call against 2.6 us without it).

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, bool causal, double scale,
                                                const std::optional<at::Tensor>& pad) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = attention_op().call(q, k, v, causal, scale, pad);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["pad"] = pad;
    // lse is saved for the backward, not meant to be differentiated.
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("lmforge::attention_backward", "")
                               .typed<decltype(attention_backward_cpu)>();
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return torch::autograd::variable_list(6);
    auto [dq, dk, dv] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                ctx->saved_data["causal"].toBool(),
                                ctx->saved_data["scale"].toDouble(),
                                ctx->saved_data["pad"].toOptional<at::Tensor>());
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, bool causal,
                                                      double scale,
                                                      const std::optional<at::Tensor>& pad) {
  // Without gradients (decoding), skip building a graph node: about 1.3 us of a step.
  const bool wants_grad = q.requires_grad() || k.requires_grad() || v.requires_grad();
  if (!at::GradMode::is_enabled() || !wants_grad) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return attention_op().call(q, k, v, causal, scale, pad);
  }
  const auto outputs = AttentionFunction::apply(q, k, v, causal, scale, pad);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

TORCH_LIBRARY_IMPL(lmforge, Autograd, m) {
  m.impl("attention", &attention_autograd);
}
