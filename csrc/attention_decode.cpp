// The decoding path of lmforge::attention: one query row per head against a KV cache (Tq == 1).
#include "attention.h"

#include <ATen/Parallel.h>

#include <limits>
#include <type_traits>
#include <vector>

namespace lmforge::attention {

namespace {

// Decoding (one query row per head against a KV cache) has no tile to multiply: BLAS calls and
// the score tile would cost more than the work, so it takes vectorized dot products and axpys.
// Keys split into chunks of this many, one task each; the chunks' partial results are merged by
// their log-sum-exp, so a batch with fewer heads than cores still uses every core.
constexpr int64_t kDecodeChunk = 256;
// Multiply-adds each thread must get before a call forks threads (a fork costs about a
// microsecond); above it the threads' own L2 caches double the bandwidth decoding is bound by.
constexpr int64_t kDecodeThreadWork = int64_t(1) << 16;

// One vector of the accumulation type from x (bf16 widens to float).
template <typename T>
inline Vectorized<Acc<T>> load_acc(const T* x) {
  if constexpr (std::is_same_v<T, Acc<T>>) {
    return Vectorized<T>::loadu(x);
  } else {
    Vectorized<float> out;
    at::vec::load_to_float<T>(x, out);
    return out;
  }
}

template <typename T>
Acc<T> dot(const Acc<T>* q, const T* k, int64_t n) {
  using Vec = Vectorized<Acc<T>>;
  Vec sum(0);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    sum = at::vec::fmadd(Vec::loadu(q + c), load_acc(k + c), sum);
  }
  Acc<T> total = at::vec::vec_reduce_all<Acc<T>>([](Vec& x, Vec& y) { return x + y; }, sum);
  for (; c < n; ++c) total += q[c] * static_cast<Acc<T>>(k[c]);
  return total;
}

// out[0..3] = the lane sums of four vectors.
template <typename A>
void sum4(const Vectorized<A>& a0, const Vectorized<A>& a1, const Vectorized<A>& a2,
          const Vectorized<A>& a3, A* out) {
  const auto add = [](Vectorized<A>& x, Vectorized<A>& y) { return x + y; };
  out[0] = at::vec::vec_reduce_all<A>(add, a0);
  out[1] = at::vec::vec_reduce_all<A>(add, a1);
  out[2] = at::vec::vec_reduce_all<A>(add, a2);
  out[3] = at::vec::vec_reduce_all<A>(add, a3);
}

// s_j = scale * q . k_j for n keys of d values, four keys at a time: each q vector loaded serves
// four keys, and the four independent multiply-add chains overlap.
template <typename T>
void score_keys(const Acc<T>* q, const T* k, int64_t k_st, int64_t n, int64_t d, Acc<T> scale,
                Acc<T>* s) {
  using A = Acc<T>;
  using Vec = Vectorized<A>;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const T* k0 = k + j * k_st;
    const T *k1 = k0 + k_st, *k2 = k1 + k_st, *k3 = k2 + k_st;
    Vec a0(0), a1(0), a2(0), a3(0);
    int64_t c = 0;
    for (; c + Vec::size() <= d; c += Vec::size()) {
      const Vec qc = Vec::loadu(q + c);
      a0 = at::vec::fmadd(qc, load_acc(k0 + c), a0);
      a1 = at::vec::fmadd(qc, load_acc(k1 + c), a1);
      a2 = at::vec::fmadd(qc, load_acc(k2 + c), a2);
      a3 = at::vec::fmadd(qc, load_acc(k3 + c), a3);
    }
    sum4(a0, a1, a2, a3, s + j);
    for (; c < d; ++c) {
      s[j] += q[c] * static_cast<A>(k0[c]);
      s[j + 1] += q[c] * static_cast<A>(k1[c]);
      s[j + 2] += q[c] * static_cast<A>(k2[c]);
      s[j + 3] += q[c] * static_cast<A>(k3[c]);
    }
    for (int64_t r = 0; r < 4; ++r) s[j + r] *= scale;
  }
  for (; j < n; ++j) s[j] = scale * dot(q, k + j * k_st, d);
}

// acc += sum_j p_j v_j over n value rows of dv, four rows per pass over acc.
template <typename T>
void weighted_sum(const Acc<T>* p, const T* v, int64_t v_st, int64_t n, int64_t dv,
                  Acc<T>* acc) {
  using A = Acc<T>;
  using Vec = Vectorized<A>;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const T* v0 = v + j * v_st;
    const T *v1 = v0 + v_st, *v2 = v1 + v_st, *v3 = v2 + v_st;
    const Vec p0(p[j]), p1(p[j + 1]), p2(p[j + 2]), p3(p[j + 3]);
    int64_t c = 0;
    for (; c + Vec::size() <= dv; c += Vec::size()) {
      Vec a = at::vec::fmadd(p0, load_acc(v0 + c), Vec::loadu(acc + c));
      a = at::vec::fmadd(p1, load_acc(v1 + c), a);
      a = at::vec::fmadd(p2, load_acc(v2 + c), a);
      at::vec::fmadd(p3, load_acc(v3 + c), a).store(acc + c);
    }
    for (; c < dv; ++c) {
      acc[c] += p[j] * static_cast<A>(v0[c]) + p[j + 1] * static_cast<A>(v1[c]) +
                p[j + 2] * static_cast<A>(v2[c]) + p[j + 3] * static_cast<A>(v3[c]);
    }
  }
  for (; j < n; ++j) {
    const T* vj = v + j * v_st;
    for (int64_t c = 0; c < dv; ++c) acc[c] += p[j] * static_cast<A>(vj[c]);
  }
}

// One chunk's softmax partial: the unnormalized sum of exp(s_j - max) v_j, then max and the sum
// of exp(s_j - max), in part[0 .. dv + 1]. A chunk with every key padded has max -inf and sum 0.
template <typename T>
void decode_chunk(const Acc<T>* q, const T* k, int64_t k_st, const T* v, int64_t v_st,
                  const bool* pad, int64_t n, int64_t d, int64_t dv, Acc<T> scale,
                  Acc<T>* scores, Acc<T>* part) {
  using A = Acc<T>;
  const A neg_inf = -std::numeric_limits<A>::infinity();
  score_keys(q, k, k_st, n, d, scale, scores);
  if (pad) {
    for (int64_t j = 0; j < n; ++j) {
      if (pad[j]) scores[j] = neg_inf;
    }
  }
  const A max = at::vec::reduce_all<A>(
      [](Vectorized<A>& x, Vectorized<A>& y) { return at::vec::maximum(x, y); }, scores, n);
  std::fill(part, part + dv, A(0));
  part[dv] = max;
  part[dv + 1] = A(0);
  if (max == neg_inf) return;
  part[dv + 1] = exp_row(scores, n, max);
  weighted_sum(scores, v, v_st, n, dv, part);
}

// Merges one head's chunk partials into its output row and log-sum-exp.
template <typename T>
void merge_chunks(const Acc<T>* parts, int64_t chunks, int64_t dv, Acc<T>* acc, T* out,
                  Acc<T>* lse) {
  using A = Acc<T>;
  const int64_t stride = dv + 2;
  A max = -std::numeric_limits<A>::infinity();
  for (int64_t c = 0; c < chunks; ++c) max = std::max(max, parts[c * stride + dv]);
  std::fill(acc, acc + dv, A(0));
  A sum = 0;
  if (max != -std::numeric_limits<A>::infinity()) {
    for (int64_t c = 0; c < chunks; ++c) {
      const A* part = parts + c * stride;
      const A weight = std::exp(part[dv] - max);
      sum += weight * part[dv + 1];
      for (int64_t e = 0; e < dv; ++e) acc[e] += weight * part[e];
    }
  }
  // Every key padded: zeros with lse 0, as the tiled kernel gives.
  const A inv = sum > A(0) ? A(1) / sum : A(0);
  for (int64_t e = 0; e < dv; ++e) out[e] = static_cast<T>(acc[e] * inv);
  *lse = sum > A(0) ? max + std::log(sum) : A(0);
}

template <typename T>
void decode_kernel(const Shapes& sh, const Rows& q, const Rows& k, const Rows& v, const bool* pad,
                   Acc<T> scale, T* out, Acc<T>* lse) {
  using A = Acc<T>;
  const int64_t chunks = (sh.tk + kDecodeChunk - 1) / kDecodeChunk;
  const int64_t heads = sh.b * sh.h;
  std::vector<A> parts(heads * chunks * (sh.dv + 2));
  const int64_t task_work = std::min(sh.tk, kDecodeChunk) * (sh.d + sh.dv);
  const int64_t grain = std::max<int64_t>(1, kDecodeThreadWork / std::max<int64_t>(task_work, 1));
  const T* qp = q.t.data_ptr<T>();
  const T* kp = k.t.data_ptr<T>();
  const T* vp = v.t.data_ptr<T>();
  at::parallel_for(0, heads * chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> scores(kDecodeChunk), qrow(sh.d);
    int64_t loaded = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / chunks, b = bh / sh.h, h = bh % sh.h;
      const int64_t j0 = (task % chunks) * kDecodeChunk;
      if (bh != loaded) {
        const T* qh = qp + b * q.sb + h * q.sh;
        std::copy(qh, qh + sh.d, qrow.begin());
        loaded = bh;
      }
      decode_chunk<T>(qrow.data(), kp + b * k.sb + h * k.sh + j0 * k.st, k.st,
                      vp + b * v.sb + h * v.sh + j0 * v.st, v.st,
                      pad ? pad + b * sh.tk + j0 : nullptr, std::min(kDecodeChunk, sh.tk - j0),
                      sh.d, sh.dv, scale, scores.data(), parts.data() + task * (sh.dv + 2));
    }
  });
  std::vector<A> acc(sh.dv);
  for (int64_t bh = 0; bh < heads; ++bh) {
    merge_chunks<T>(parts.data() + bh * chunks * (sh.dv + 2), chunks, sh.dv, acc.data(),
                    out + bh * sh.dv, lse + bh);
  }
}

}  // namespace

void decode(const Shapes& sh, const Rows& q, const Rows& k, const Rows& v, const bool* pad,
            double scale, at::Tensor& out, at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "lmforge::attention", [&] {
    using A = Acc<scalar_t>;
    decode_kernel<scalar_t>(sh, q, k, v, pad, static_cast<A>(scale), out.data_ptr<scalar_t>(),
                            lse.data_ptr<A>());
  });
}

}  // namespace lmforge::attention
