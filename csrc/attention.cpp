// Fused CPU attention (flash-style): lmforge::attention and lmforge::attention_backward kernels.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
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

using at::vec::Vectorized;

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

// Row-major C (m x n) = alpha * op(A) op(B) + beta * C, where op(A) is m x k and `ta` means A is
// stored k x m. BLAS is column-major, so this computes C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  blas_gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// Strides of a (B, H, T, D) tensor whose rows BLAS can read in place; other layouts are copied.
struct Rows {
  at::Tensor t;
  int64_t sb, sh, st;
};

Rows rows(const at::Tensor& t) {
  const int64_t d = t.size(3);
  const bool readable = t.stride(3) == 1 && (t.size(2) <= 1 || t.stride(2) >= d);
  at::Tensor r = readable ? t : t.contiguous();
  // BLAS wants a leading dimension of at least the row length even for a single row.
  return {r, r.stride(0), r.stride(1), r.size(2) <= 1 ? std::max<int64_t>(d, 1) : r.stride(2)};
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

// s[c] = exp(s[c] - shift) over a row; returns the row sum. exp(-inf) = 0 covers masked keys.
template <typename T>
T exp_row(T* s, int64_t n, T shift) {
  using Vec = Vectorized<T>;
  const Vec vshift(shift);
  Vec vsum(0);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    Vec x = (Vec::loadu(s + c) - vshift).exp_u20();
    x.store(s + c);
    vsum += x;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, vsum);
  for (; c < n; ++c) {
    s[c] = std::exp(s[c] - shift);
    sum += s[c];
  }
  return sum;
}

struct Shapes {
  int64_t b, h, tq, tk, d, dv;
};

Shapes check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& pad) {
  TORCH_CHECK(sgemm_ && dgemm_,
              "lmforge::attention: this torch build exports no Fortran BLAS (sgemm_, dgemm_)");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "lmforge::attention: q, k, v must be (B, H, T, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "lmforge::attention: q, k, v must share a dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "lmforge::attention: the CPU kernel takes float32 or float64, found ",
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
                    const bool* pad, bool causal, T scale, T* out, T* lse) {
  const int64_t q_blocks = (sh.tq + kQueryBlock - 1) / kQueryBlock;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const T* qp = q.t.data_ptr<T>();
  const T* kp = k.t.data_ptr<T>();
  const T* vp = v.t.data_ptr<T>();
  at::parallel_for(0, sh.b * sh.h * q_blocks, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlas sequential;
    std::vector<T> scores(kQueryBlock * kKeyBlock), acc(kQueryBlock * sh.dv);
    std::vector<T> row_max(kQueryBlock), row_sum(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, b = bh / sh.h, h = bh % sh.h;
      const int64_t i0 = (task % q_blocks) * kQueryBlock;
      const int64_t m = std::min(kQueryBlock, sh.tq - i0);
      const T* qb = qp + b * q.sb + h * q.sh + i0 * q.st;
      const T* kb = kp + b * k.sb + h * k.sh;
      const T* vb = vp + b * v.sb + h * v.sh;
      const bool* padb = pad ? pad + b * sh.tk : nullptr;
      std::fill(row_max.begin(), row_max.end(), neg_inf);
      std::fill(row_sum.begin(), row_sum.end(), T(0));
      std::fill(acc.begin(), acc.end(), T(0));
      // Keys past the block's last visible key contribute nothing: stop the loop there.
      const int64_t keys = std::min(sh.tk, last_key(causal, i0 + m - 1, sh.tq, sh.tk) + 1);
      for (int64_t j0 = 0; j0 < keys; j0 += kKeyBlock) {
        const int64_t n = std::min(kKeyBlock, keys - j0);
        gemm<T>(false, true, m, n, sh.d, scale, qb, q.st, kb + j0 * k.st, k.st, T(0),
                scores.data(), n);
        for (int64_t r = 0; r < m; ++r) {
          T* s = scores.data() + r * n;
          mask_row(s, n, j0, last_key(causal, i0 + r, sh.tq, sh.tk), padb);
          const T tile_max = at::vec::reduce_all<T>(
              [](Vectorized<T>& x, Vectorized<T>& y) { return at::vec::maximum(x, y); }, s, n);
          const T new_max = std::max(row_max[r], tile_max);
          // A row with every key masked so far keeps max -inf; shift by 0 so exp gives 0, not NaN.
          const T shift = new_max == neg_inf ? T(0) : new_max;
          const T correction = std::exp(row_max[r] - shift);
          row_sum[r] = row_sum[r] * correction + exp_row(s, n, shift);
          row_max[r] = new_max;
          if (correction != T(1)) {
            T* a = acc.data() + r * sh.dv;
            at::vec::map([correction](Vectorized<T> x) { return x * Vectorized<T>(correction); },
                         a, a, sh.dv);
          }
        }
        gemm<T>(false, false, m, sh.dv, n, T(1), scores.data(), n, vb + j0 * v.st, v.st, T(1),
                acc.data(), sh.dv);
      }
      T* ob = out + (bh * sh.tq + i0) * sh.dv;
      T* lb = lse + bh * sh.tq + i0;
      for (int64_t r = 0; r < m; ++r) {
        // A row whose keys are all masked outputs zeros with lse 0: finite, and the backward
        // masks the same scores to -inf, so its probabilities stay 0.
        const T l = row_sum[r];
        const T inv = l > T(0) ? T(1) / l : T(0);
        at::vec::map([inv](Vectorized<T> x) { return x * Vectorized<T>(inv); },
                     ob + r * sh.dv, acc.data() + r * sh.dv, sh.dv);
        lb[r] = l > T(0) ? row_max[r] + std::log(l) : T(0);
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
  at::Tensor out = at::empty({sh.b, sh.h, sh.tq, sh.dv}, q_in.options());
  at::Tensor lse = at::empty({sh.b, sh.h, sh.tq}, q_in.options());
  AT_DISPATCH_FLOATING_TYPES(q_in.scalar_type(), "lmforge::attention", [&] {
    forward_kernel<scalar_t>(sh, q, k, v, pad.defined() ? pad.data_ptr<bool>() : nullptr, causal,
                             static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(),
                             lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

// Flash-attention backward: recomputes each probability tile from the saved log-sum-exp, so no
// Tq x Tk matrix is kept. One task per (batch, head) owns that head's dK and dV rows.
template <typename T>
void backward_kernel(const Shapes& sh, const Rows& go, const Rows& q, const Rows& k,
                     const Rows& v, const Rows& o, const T* lse, const bool* pad, bool causal,
                     T scale, T* dq, T* dk, T* dv) {
  at::parallel_for(0, sh.b * sh.h, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlas sequential;
    std::vector<T> probs(kQueryBlock * kKeyBlock), dprobs(kQueryBlock * kKeyBlock);
    std::vector<T> delta(kQueryBlock);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / sh.h, h = bh % sh.h;
      const T* qh = q.t.data_ptr<T>() + b * q.sb + h * q.sh;
      const T* kh = k.t.data_ptr<T>() + b * k.sb + h * k.sh;
      const T* vh = v.t.data_ptr<T>() + b * v.sb + h * v.sh;
      const T* oh = o.t.data_ptr<T>() + b * o.sb + h * o.sh;
      const T* goh = go.t.data_ptr<T>() + b * go.sb + h * go.sh;
      const T* lh = lse + bh * sh.tq;
      const bool* padb = pad ? pad + b * sh.tk : nullptr;
      T* dqh = dq + bh * sh.tq * sh.d;
      T* dkh = dk + bh * sh.tk * sh.d;
      T* dvh = dv + bh * sh.tk * sh.dv;
      for (int64_t i0 = 0; i0 < sh.tq; i0 += kQueryBlock) {
        const int64_t m = std::min(kQueryBlock, sh.tq - i0);
        // delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, the softmax backward's row term.
        for (int64_t r = 0; r < m; ++r) {
          delta[r] = at::vec::map2_reduce_all<T>(
              [](Vectorized<T> x, Vectorized<T> y) { return x * y; },
              [](Vectorized<T> x, Vectorized<T> y) { return x + y; },
              goh + (i0 + r) * go.st, oh + (i0 + r) * o.st, sh.dv);
        }
        const T* qb = qh + i0 * q.st;
        const T* gob = goh + i0 * go.st;
        const int64_t keys = std::min(sh.tk, last_key(causal, i0 + m - 1, sh.tq, sh.tk) + 1);
        for (int64_t j0 = 0; j0 < keys; j0 += kKeyBlock) {
          const int64_t n = std::min(kKeyBlock, keys - j0);
          gemm<T>(false, true, m, n, sh.d, scale, qb, q.st, kh + j0 * k.st, k.st, T(0),
                  probs.data(), n);
          for (int64_t r = 0; r < m; ++r) {
            T* p = probs.data() + r * n;
            mask_row(p, n, j0, last_key(causal, i0 + r, sh.tq, sh.tk), padb);
            exp_row(p, n, lh[i0 + r]);
          }
          // dV_j += P^T dO_i;  dP = dO_i V_j^T
          gemm<T>(true, false, n, sh.dv, m, T(1), probs.data(), n, gob, go.st, T(1),
                  dvh + j0 * sh.dv, sh.dv);
          gemm<T>(false, true, m, n, sh.dv, T(1), gob, go.st, vh + j0 * v.st, v.st, T(0),
                  dprobs.data(), n);
          // dS = P * (dP - delta), written over dP.
          for (int64_t r = 0; r < m; ++r) {
            const Vectorized<T> dr(delta[r]);
            at::vec::map2([dr](Vectorized<T> p, Vectorized<T> dp) { return p * (dp - dr); },
                          dprobs.data() + r * n, probs.data() + r * n, dprobs.data() + r * n, n);
          }
          // dQ_i += scale dS K_j;  dK_j += scale dS^T Q_i
          gemm<T>(false, false, m, sh.d, n, scale, dprobs.data(), n, kh + j0 * k.st, k.st, T(1),
                  dqh + i0 * sh.d, sh.d);
          gemm<T>(true, false, n, sh.d, m, scale, dprobs.data(), n, qb, q.st, T(1),
                  dkh + j0 * sh.d, sh.d);
        }
      }
    }
  });
}

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
  // grad_out is often an expanded (stride 0) tensor: rows() copies such layouts.
  const Rows go = rows(grad_out.to(dtype)), q = rows(q_in), k = rows(k_in), v = rows(v_in),
             o = rows(out.to(dtype));
  at::Tensor lse = lse_in.to(dtype).contiguous();
  at::Tensor pad = pad_in ? pad_in->contiguous() : at::Tensor();
  // The gradients accumulate tile by tile, so they start at zero.
  at::Tensor dq = at::zeros({sh.b, sh.h, sh.tq, sh.d}, q_in.options());
  at::Tensor dk = at::zeros({sh.b, sh.h, sh.tk, sh.d}, q_in.options());
  at::Tensor dv = at::zeros({sh.b, sh.h, sh.tk, sh.dv}, q_in.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "lmforge::attention_backward", [&] {
    backward_kernel<scalar_t>(sh, go, q, k, v, o, lse.data_ptr<scalar_t>(),
                              pad.defined() ? pad.data_ptr<bool>() : nullptr, causal,
                              static_cast<scalar_t>(scale), dq.data_ptr<scalar_t>(),
                              dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}
