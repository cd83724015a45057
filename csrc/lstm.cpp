// Fused CPU LSTM: one layer and direction over a sequence (forward, backward), and one step.
// Only the headers used: torch/extension.h would add about 40 s of parsing here.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;
using at::vec::Vectorized;

template <typename T>
inline Vectorized<T> sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return one / (one + x.neg().exp());
}

// n <= A's vector width values of p as a vector of A, the accumulation type: bfloat16
// activations are widened to float, float and double load as they are.
template <typename A, typename T>
inline Vectorized<A> load(const T* p, int64_t n) {
  if constexpr (std::is_same_v<A, T>) {
    return Vectorized<A>::loadu(p, n);
  } else {
    A wide[Vectorized<A>::size()];
    at::vec::convert(p, wide, n);
    return Vectorized<A>::loadu(wide, n);
  }
}

template <typename A, typename T>
inline void store(const Vectorized<A>& v, T* p, int64_t n) {
  if constexpr (std::is_same_v<A, T>) {
    v.store(p, n);
  } else {
    A wide[Vectorized<A>::size()];
    v.store(wide, n);
    at::vec::convert(wide, p, n);
  }
}

// One step for one batch row over n columns. pre holds the input projection of the four gates
// (i, f, g, o; biases included), ld_pre apart, and receives their activations, which backward
// needs; rec holds h_{t-1} @ W_hh^T, ld_rec apart. Writes c_t and h_t, and h_t unrounded to
// h_wide unless null. A is the accumulation type (float for float and bfloat16, double for
// double), T the activations' type, R that of rec.
template <typename A, typename R, typename T>
inline void gates_forward(A* pre, int64_t ld_pre, const R* rec, int64_t ld_rec, const A* c_prev,
                          A* c, T* h, A* h_wide, int64_t n) {
  using V = Vectorized<A>;
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t m = std::min<int64_t>(V::size(), n - j);
    auto gate = [&](int64_t k) {
      return V::loadu(pre + k * ld_pre + j, m) + load<A>(rec + k * ld_rec + j, m);
    };
    const V i = sigmoid(gate(0));
    const V f = sigmoid(gate(1));
    const V g = gate(2).tanh();
    const V o = sigmoid(gate(3));
    const V c_new = f * V::loadu(c_prev + j, m) + i * g;
    i.store(pre + j, m);
    f.store(pre + ld_pre + j, m);
    g.store(pre + 2 * ld_pre + j, m);
    o.store(pre + 3 * ld_pre + j, m);
    c_new.store(c + j, m);
    const V h_new = o * c_new.tanh();
    store(h_new, h + j, m);
    if (h_wide != nullptr) {
      h_new.store(h_wide + j, m);
    }
  }
}

// The backward of gates_forward for one batch row over n columns: act holds the activations
// (ld apart); dh = grad_out + dh_rec is the gradient reaching h_t; dc carries the gradient of
// c_t in and leaves with that of c_{t-1}; dg (ld apart) receives the gradients of the four
// gates' pre-activations, and unrounded dg_wide (ld apart) unless null.
template <typename A, typename R, typename T>
inline void gates_backward(const A* act, const A* c, const A* c_prev, const T* grad_out,
                           const R* dh_rec, A* dc, T* dg, A* dg_wide, int64_t ld, int64_t n) {
  using V = Vectorized<A>;
  const V one(A(1));
  for (int64_t j = 0; j < n; j += V::size()) {
    const int64_t m = std::min<int64_t>(V::size(), n - j);
    const V i = V::loadu(act + j, m);
    const V f = V::loadu(act + ld + j, m);
    const V g = V::loadu(act + 2 * ld + j, m);
    const V o = V::loadu(act + 3 * ld + j, m);
    const V tc = V::loadu(c + j, m).tanh();
    const V dh = load<A>(grad_out + j, m) + load<A>(dh_rec + j, m);
    const V dcv = V::loadu(dc + j, m) + dh * o * (one - tc * tc);
    auto put = [&](int64_t k, const V& v) {
      store(v, dg + k * ld + j, m);
      if (dg_wide != nullptr) {
        v.store(dg_wide + k * ld + j, m);
      }
    };
    put(0, dcv * g * i * (one - i));
    put(1, dcv * V::loadu(c_prev + j, m) * f * (one - f));
    put(2, dcv * i * (one - g * g));
    put(3, dh * tc * o * (one - o));
    (dcv * f).store(dc + j, m);
  }
}

// C (M, N) = A (M, K) @ B (K, N), or C += A @ B, all row-major with leading dimensions, on the
// calling thread (it runs inside a parallel region): oneDNN's batch-reduce GEMM ukernel.
void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, a, b, c);
}

// float64 serves gradcheck's small sizes only: a plain loop.
void gemm(int64_t M, int64_t N, int64_t K, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double sum = accumulate ? c[m * ldc + n] : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        sum += a[m * lda + k] * b[k * ldb + n];
      }
      c[m * ldc + n] = sum;
    }
  }
}

// A step splits the hidden columns [0, H) into one slice per thread; each thread runs its
// slice's part of the step's GEMM and then its gate pass, so a step is one parallel region
// with no hand-off between the GEMM and the gates, and each thread's part of W_hh stays in its
// core's cache from step to step.
struct Slices {
  int64_t H, count, width;

  explicit Slices(int64_t hidden) : H(hidden) {
    constexpr int64_t lanes = 16;  // a multiple of every vector width
    count = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (H + lanes - 1) / lanes));
    width = ((H + count - 1) / count + lanes - 1) / lanes * lanes;
    count = std::max<int64_t>(1, (H + width - 1) / width);
  }

  int64_t begin(int64_t k) const { return k * width; }
  int64_t end(int64_t k) const { return std::min(H, (k + 1) * width); }

  // fn(j0, j1) for every slice, one per thread.
  template <typename F>
  void run(const F& fn) const {
    at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        fn(begin(k), end(k));
      }
    });
  }

  // W_hh (4H, H) as the right side (H, 4H) of the step's GEMM, its columns ordered by slice and
  // then by gate: slice [j0, j1) owns the 4 * (j1 - j0) columns from 4 * j0 on, gate by gate.
  Tensor recurrent_weight(const Tensor& w_hh) const {
    const Tensor gates = w_hh.reshape({4, H, H});
    std::vector<Tensor> parts;
    for (int64_t k = 0; k < count; ++k) {
      parts.push_back(gates.narrow(1, begin(k), end(k) - begin(k)).reshape({-1, H}));
    }
    return at::cat(parts).t().contiguous();
  }
};

// Columns per task of the one-step op's gate pass: a multiple of every vector width.
constexpr int64_t kBlock = 256;

// Calls fn(b, j0, j1) for every row b < rows and column block [j0, j1) of [0, H). The pass is
// light next to the GEMMs, so it only goes parallel from about 4k elements on (the batch-1
// generation step stays on the calling thread, free of any thread hand-off).
template <typename F>
void for_blocks(int64_t rows, int64_t H, const F& fn) {
  const int64_t blocks = (H + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::min(H, kBlock));
  at::parallel_for(0, rows * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t j0 = (k % blocks) * kBlock;
      fn(k / blocks, j0, std::min(H, j0 + kBlock));
    }
  });
}

void check_args(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh, int64_t x_dim) {
  TORCH_CHECK(x.dim() == x_dim, "lmforge::lstm: input must be ",
              x_dim == 3 ? "(B, T, In)" : "(B, In)", ", found ", x.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1),
              "lmforge::lstm: w_hh must be (4H, H), found ", w_hh.sizes());
  const int64_t B = x.size(0), In = x.size(-1), H = w_hh.size(1);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * H && w_ih.size(1) == In,
              "lmforge::lstm: w_ih must be (4H, In) = (", 4 * H, ", ", In, "), found ",
              w_ih.sizes());
  TORCH_CHECK(b_ih.sizes() == at::IntArrayRef{4 * H} && b_hh.sizes() == at::IntArrayRef{4 * H},
              "lmforge::lstm: b_ih and b_hh must be (4H,), found ", b_ih.sizes(), " and ",
              b_hh.sizes());
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, H}) && c0.sizes() == at::IntArrayRef({B, H}),
              "lmforge::lstm: h0 and c0 must be (B, H) = (", B, ", ", H, "), found ", h0.sizes(),
              " and ", c0.sizes());
  for (const Tensor* t : {&h0, &c0, &w_ih, &w_hh, &b_ih, &b_hh}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "lmforge::lstm: all tensors must share the "
                "input's dtype ", x.scalar_type(), ", found ", t->scalar_type());
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
              x.scalar_type() == at::kBFloat16,
              "lmforge::lstm: float32, float64 or bfloat16 only, found ", x.scalar_type());
}

// The accumulation dtype of the gates, cell states and their gradients: float for bfloat16.
at::ScalarType acc_type(const Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? at::kFloat : x.scalar_type();
}

// Tiles of the whole-sequence float GEMMs: rows and columns per task, and the reduction chunk
// that keeps a tile's operands in cache.
constexpr int64_t kTileM = 64, kTileN = 256, kChunkK = 512;

// c (M, N) = a (M, K) @ b (K, N), or c += a @ b, all float and contiguous, in tiles of the
// brgemm ukernel across the threads. MKL's sgemm, which at::mm takes for float, reaches about
// half the ukernel's rate on the AMD CPUs here (60 against 110 to 150 GFLOP/s per core).
void gemm_tiles(const Tensor& a, const Tensor& b, const Tensor& c, bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (K == 0 && !accumulate) {
    c.zero_();
  }
  const float* pa = a.const_data_ptr<float>();
  const float* pb = b.const_data_ptr<float>();
  float* pc = c.data_ptr<float>();
  const int64_t tiles_n = (N + kTileN - 1) / kTileN;
  const int64_t tiles = (M + kTileM - 1) / kTileM * tiles_n;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t i = tile / tiles_n * kTileM, j = tile % tiles_n * kTileN;
      const int64_t m = std::min(kTileM, M - i), n = std::min(kTileN, N - j);
      for (int64_t p = 0; p < K; p += kChunkK) {
        gemm(m, n, std::min(kChunkK, K - p), pa + i * K + p, K, pb + p * N + j, N,
             pc + i * N + j, N, accumulate || p > 0);
      }
    }
  });
}

// a (M, K) @ b (K, N): gemm_tiles for float, at::mm otherwise (oneDNN for bfloat16).
Tensor sequence_mm(const Tensor& a, const Tensor& b) {
  if (a.scalar_type() != at::kFloat) {
    return at::mm(a, b);
  }
  Tensor c = at::empty({a.size(0), b.size(1)}, a.options());
  gemm_tiles(a.contiguous(), b.contiguous(), c, false);
  return c;
}

// x (B * T, In) @ W_ih^T + b_ih + b_hh for every step in one GEMM, in the accumulation dtype.
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const Tensor& b_ih,
                        const Tensor& b_hh) {
  switch (x.scalar_type()) {
    case at::kFloat: {
      Tensor out = b_ih.add(b_hh).expand({x.size(0), w_ih.size(0)}).contiguous();
      gemm_tiles(x, w_ih.t().contiguous(), out, true);
      return out;
    }
    case at::kBFloat16:
      return at::mm(x, w_ih.t()).to(at::kFloat).add(b_ih.to(at::kFloat).add(b_hh.to(at::kFloat)));
    default:
      return at::addmm(b_ih.add(b_hh), x, w_ih.t());
  }
}

// The steps of lstm_cpu: per step one parallel region (see Slices). bfloat16 runs them in
// float: oneDNN's bf16 GEMM is only reachable through at::mm here (the bf16 ukernel needs
// AMX), whose per-call cost at the step's small sizes outweighs its speed.
template <typename scalar_t>
void forward_steps(const Tensor& h0, const Tensor& c0, const Tensor& w_hh, const Tensor& gates,
                   const Tensor& cells, const Tensor& output, bool reverse) {
  using acc_t = at::opmath_type<scalar_t>;
  // bfloat16 keeps h_{t-1} unrounded for the step GEMM, in two slots used in turn (the output
  // holds it rounded); float and double read it in place from the output.
  constexpr bool wide = !std::is_same_v<scalar_t, acc_t>;
  const int64_t B = output.size(0), T = output.size(1), H = output.size(2);
  const auto acc = gates.options();
  const Slices slices(H);
  const Tensor w_rec = slices.recurrent_weight(w_hh.to(acc));
  Tensor rec = at::empty({B, 4 * H}, acc);
  Tensor h_wide = at::empty({wide ? 2 : 0, B, H}, acc);
  if (wide) {
    h_wide[1].copy_(h0);
  }
  acc_t* g = gates.data_ptr<acc_t>();
  acc_t* cs = cells.data_ptr<acc_t>();
  acc_t* r = rec.data_ptr<acc_t>();
  acc_t* hw = h_wide.data_ptr<acc_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const acc_t* w = w_rec.const_data_ptr<acc_t>();
  const acc_t* c_init = c0.const_data_ptr<acc_t>();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s, prev = reverse ? t + 1 : t - 1;
    const acc_t* h_prev;
    int64_t ld_h = H;
    if constexpr (wide) {
      h_prev = hw + (s + 1) % 2 * B * H;
    } else {
      // Rows T * H apart in the output.
      h_prev = s == 0 ? h0.const_data_ptr<acc_t>() : out + prev * H;
      ld_h = s == 0 ? H : T * H;
    }
    acc_t* h_next = wide ? hw + s % 2 * B * H : nullptr;
    slices.run([&](int64_t j0, int64_t j1) {
      const int64_t n = j1 - j0;
      gemm(B, 4 * n, H, h_prev, ld_h, w + 4 * j0, 4 * H, r + 4 * j0, 4 * H, false);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = b * T + t;
        const acc_t* c_prev = s == 0 ? c_init + b * H : cs + (b * T + prev) * H;
        gates_forward(g + row * 4 * H + j0, H, r + b * 4 * H + 4 * j0, n, c_prev + j0,
                      cs + row * H + j0, out + row * H + j0,
                      wide ? h_next + b * H + j0 : nullptr, n);
      }
    });
  }
}

// Forward over x (B, T, In), in time order or reversed. Returns output (B, T, H), h_n and c_n
// (B, H), and for backward the gate activations (B, T, 4H) and cell states (B, T, H), those two
// in the accumulation dtype.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cpu(
    const Tensor& input, const Tensor& h0_, const Tensor& c0_, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh, bool reverse) {
  // Autograd is the Python registration's business; the inner GEMMs must not see it.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_args(input, h0_, c0_, w_ih, w_hh, b_ih, b_hh, 3);
  const Tensor x = input.contiguous(), h0 = h0_.contiguous();
  const int64_t B = x.size(0), T = x.size(1), In = x.size(2), H = w_hh.size(1);
  const auto acc = x.options().dtype(acc_type(x));
  const Tensor c0 = c0_.to(acc).contiguous();
  // Each step overwrites its slice of the projection with the gate activations, so this
  // buffer is also what backward saves.
  Tensor gates = input_projection(x.view({B * T, In}), w_ih, b_ih, b_hh).view({B, T, 4 * H});
  Tensor output = at::empty({B, T, H}, x.options());
  Tensor cells = at::empty({B, T, H}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lmforge_lstm", [&] {
    forward_steps<scalar_t>(h0, c0, w_hh, gates, cells, output, reverse);
  });
  const int64_t last = reverse ? 0 : T - 1;
  const auto copy = [&](const Tensor& t) { return t.to(x.scalar_type(), false, true); };
  Tensor h_n = T > 0 ? copy(output.select(1, last)) : copy(h0);
  Tensor c_n = T > 0 ? copy(cells.select(1, last)) : copy(c0);
  return {output, h_n, c_n, gates, cells};
}

// The steps of lstm_backward_cpu (bfloat16 in float, as forward_steps): per step one parallel
// region in which each thread's column slice gets its part of dh = dgates_{t+1} @ W_hh and
// then its gate pass. dh_rec comes in as grad_h_n and dc as grad_c_n; dc leaves as grad_c0.
template <typename scalar_t>
void backward_steps(const Tensor& grad_output, const Tensor& c0, const Tensor& w_hh,
                    const Tensor& gates, const Tensor& cells, const Tensor& dh_rec,
                    const Tensor& dc, const Tensor& dgates, bool reverse) {
  using acc_t = at::opmath_type<scalar_t>;
  // bfloat16 keeps dgates_{t+1} unrounded for the step GEMM, as forward_steps does h_{t-1}.
  constexpr bool wide = !std::is_same_v<scalar_t, acc_t>;
  const int64_t B = dgates.size(0), T = dgates.size(1), H = w_hh.size(1);
  const Slices slices(H);
  const Tensor w_acc = w_hh.to(gates.options()).contiguous();
  Tensor dg_wide = at::empty({wide ? 2 : 0, B, 4 * H}, gates.options());
  const acc_t* g = gates.const_data_ptr<acc_t>();
  const acc_t* cs = cells.const_data_ptr<acc_t>();
  const acc_t* c_init = c0.const_data_ptr<acc_t>();
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const acc_t* w = w_acc.const_data_ptr<acc_t>();
  acc_t* dhr = dh_rec.data_ptr<acc_t>();
  acc_t* dcp = dc.data_ptr<acc_t>();
  acc_t* dgw = dg_wide.data_ptr<acc_t>();
  scalar_t* dg = dgates.data_ptr<scalar_t>();
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, prev = reverse ? t + 1 : t - 1;
    const int64_t next = reverse ? t - 1 : t + 1;
    const acc_t* dg_next;
    int64_t ld_next = 4 * H;
    if constexpr (wide) {
      dg_next = dgw + (s + 1) % 2 * B * 4 * H;
    } else {
      dg_next = dg + next * 4 * H;
      ld_next = T * 4 * H;
    }
    acc_t* dg_this = wide ? dgw + s % 2 * B * 4 * H : nullptr;
    slices.run([&](int64_t j0, int64_t j1) {
      const int64_t n = j1 - j0;
      if (s < T - 1) {
        gemm(B, n, 4 * H, dg_next, ld_next, w + j0, H, dhr + j0, H, false);
      }
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = b * T + t;
        const acc_t* c_prev = s == 0 ? c_init + b * H : cs + (b * T + prev) * H;
        gates_backward(g + row * 4 * H + j0, cs + row * H + j0, c_prev + j0, go + row * H + j0,
                       dhr + b * H + j0, dcp + b * H + j0, dg + row * 4 * H + j0,
                       wide ? dg_this + b * 4 * H + j0 : nullptr, H, n);
      }
    });
  }
}

// Backward through time of lstm_cpu: the steps, then the input and weight gradients in one
// GEMM each over all steps. grad_bias is the gradient of b_ih and of b_hh alike.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& input, const Tensor& h0, const Tensor& c0_, const Tensor& w_ih,
    const Tensor& w_hh_, const Tensor& output, const Tensor& gates_, const Tensor& cells_,
    bool reverse) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor x = input.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor grad_output = grad_output_.contiguous();
  const Tensor gates = gates_.contiguous(), cells = cells_.contiguous();
  const int64_t B = x.size(0), T = x.size(1), In = x.size(2), H = w_hh.size(1);
  const auto acc = x.options().dtype(acc_type(x));
  const Tensor c0 = c0_.to(acc).contiguous();
  Tensor dgates = at::empty({B, T, 4 * H}, x.options());
  Tensor dh_rec = grad_h_n.to(acc, false, true).contiguous();
  Tensor dc = grad_c_n.to(acc, false, true).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lmforge_lstm_backward", [&] {
    backward_steps<scalar_t>(grad_output, c0, w_hh, gates, cells, dh_rec, dc, dgates, reverse);
  });
  Tensor grad_h0 = T > 0 ? at::mm(dgates.select(1, reverse ? T - 1 : 0), w_hh)
                         : dh_rec.to(x.scalar_type());
  Tensor grad_c0 = dc.to(x.scalar_type());
  const Tensor dg2 = dgates.view({B * T, 4 * H});
  Tensor grad_input = sequence_mm(dg2, w_ih).view({B, T, In});
  // The weight gradients as (In, 4H) and (H, 4H), transposed at the end: a transposed copy of
  // x or h_prev is far smaller than one of dgates.
  Tensor grad_w_ih = sequence_mm(x.view({B * T, In}).t(), dg2).t().contiguous();
  // h_{t-1} of every step, for the one W_hh GEMM: h0 then the output shifted by one step.
  Tensor h_prev = at::empty({B, T, H}, x.options());
  if (T > 0) {
    h_prev.select(1, reverse ? T - 1 : 0).copy_(h0);
    if (reverse) {
      h_prev.narrow(1, 0, T - 1).copy_(output.narrow(1, 1, T - 1));
    } else {
      h_prev.narrow(1, 1, T - 1).copy_(output.narrow(1, 0, T - 1));
    }
  }
  Tensor grad_w_hh = sequence_mm(h_prev.view({B * T, H}).t(), dg2).t().contiguous();
  Tensor grad_bias = at::sum(dg2, {0}, false, acc_type(x)).to(x.scalar_type());
  return {grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias};
}

// One time step for generation: x (B, In), (h, c) (B, H) -> (h', c'), no state kept for backward.
std::tuple<Tensor, Tensor> lstm_step_cpu(const Tensor& input, const Tensor& h_, const Tensor& c_,
                                         const Tensor& w_ih, const Tensor& w_hh,
                                         const Tensor& b_ih, const Tensor& b_hh) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_args(input, h_, c_, w_ih, w_hh, b_ih, b_hh, 2);
  const auto acc = input.options().dtype(acc_type(input));
  const int64_t B = input.size(0), H = w_hh.size(1);
  Tensor gates = at::addmm(b_ih, input, w_ih.t());
  gates.addmm_(h_, w_hh.t());
  gates = gates.to(acc);
  const Tensor c = c_.to(acc).contiguous();
  Tensor h_new = at::empty({B, H}, input.options());
  Tensor c_new = at::empty({B, H}, acc);
  // The bias b_hh goes in as the "recurrent" term of the shared pass, the same for every row.
  const Tensor bias = b_hh.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "lmforge_lstm_step", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* g = gates.data_ptr<acc_t>();
    const acc_t* bh = bias.const_data_ptr<acc_t>();
    const acc_t* cp = c.const_data_ptr<acc_t>();
    scalar_t* hn = h_new.data_ptr<scalar_t>();
    acc_t* cn = c_new.data_ptr<acc_t>();
    for_blocks(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      gates_forward(g + b * 4 * H + j0, H, bh + j0, H, cp + b * H + j0, cn + b * H + j0,
                    hn + b * H + j0, static_cast<acc_t*>(nullptr), j1 - j0);
    });
  });
  return {h_new, c_new.to(input.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("lstm(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
        "Tensor b_hh, bool reverse=False) -> "
        "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def("lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
        "Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor gates, "
        "Tensor cells, bool reverse) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, "
        "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
  m.def("lstm_step(Tensor input, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
        "Tensor b_hh) -> (Tensor h_new, Tensor c_new)");
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("lstm", &lstm_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
  m.impl("lstm_step", &lstm_step_cpu);
}
