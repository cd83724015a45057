// What the attention kernels share: attention.cpp's tiled forward and backward and
// attention_decode.cpp's one query row against a KV cache use these types, layouts and row step.
#pragma once

// Only the headers used: torch/extension.h would add about 20 s of parsing per translation unit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>

namespace lmforge::attention {

using at::vec::Vectorized;

// Scores, softmax and sums accumulate in this type: float for bf16 inputs, else the input type.
template <typename T>
using Acc = at::opmath_type<T>;

// Strides of a (B, H, T, D) tensor whose rows BLAS can read in place; other layouts are copied.
struct Rows {
  at::Tensor t;
  int64_t sb, sh, st;
};

inline Rows rows(const at::Tensor& t) {
  const int64_t d = t.size(3);
  const bool readable = t.stride(3) == 1 && (t.size(2) <= 1 || t.stride(2) >= d);
  at::Tensor r = readable ? t : t.contiguous();
  // BLAS wants a leading dimension of at least the row length even for a single row.
  return {r, r.stride(0), r.stride(1), r.size(2) <= 1 ? std::max<int64_t>(d, 1) : r.stride(2)};
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

// The decoding kernel (Tq == 1), for float, double and bfloat16 q, k, v: writes out (B, H, 1, Dv)
// and lse (B, H, 1); defined in attention_decode.cpp.
void decode(const Shapes& sh, const Rows& q, const Rows& k, const Rows& v, const bool* pad,
            double scale, at::Tensor& out, at::Tensor& lse);

}  // namespace lmforge::attention
