// Fused CPU LSTM: one layer and direction over a sequence (forward, backward), and one step.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>

namespace {

using at::vec::Vectorized;
using at::Tensor;

template <typename T>
inline Vectorized<T> sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return one / (one + x.neg().exp());
}

// Columns per task of the gate pass: a multiple of every vector width.
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

// One step for one batch row, columns [j0, j1): g holds the input projection of the four gates
// (i, f, g, o; bias included) and receives their activations, which backward needs; rec is
// h_{t-1} @ W_hh^T. Writes c_t and h_t.
template <typename T>
inline void gates_forward(T* g, const T* rec, const T* c_prev, T* c, T* h, int64_t H, int64_t j0,
                          int64_t j1) {
  using V = Vectorized<T>;
  for (int64_t j = j0; j < j1; j += V::size()) {
    const int64_t n = std::min<int64_t>(V::size(), j1 - j);
    auto pre = [&](int64_t gate) {
      return V::loadu(g + gate * H + j, n) + V::loadu(rec + gate * H + j, n);
    };
    const V i = sigmoid(pre(0));
    const V f = sigmoid(pre(1));
    const V gg = pre(2).tanh();
    const V o = sigmoid(pre(3));
    const V c_new = f * V::loadu(c_prev + j, n) + i * gg;
    i.store(g + j, n);
    f.store(g + H + j, n);
    gg.store(g + 2 * H + j, n);
    o.store(g + 3 * H + j, n);
    c_new.store(c + j, n);
    (o * c_new.tanh()).store(h + j, n);
  }
}

// The backward of gates_forward for one batch row, columns [j0, j1): dh = grad_out + dh_rec is
// the gradient reaching h_t; dc carries the gradient of c_t in and leaves with that of c_{t-1};
// dg receives the gradients of the four gates' pre-activations.
template <typename T>
inline void gates_backward(const T* g, const T* c, const T* c_prev, const T* grad_out,
                           const T* dh_rec, T* dc, T* dg, int64_t H, int64_t j0, int64_t j1) {
  using V = Vectorized<T>;
  const V one(T(1));
  for (int64_t j = j0; j < j1; j += V::size()) {
    const int64_t n = std::min<int64_t>(V::size(), j1 - j);
    const V i = V::loadu(g + j, n);
    const V f = V::loadu(g + H + j, n);
    const V gg = V::loadu(g + 2 * H + j, n);
    const V o = V::loadu(g + 3 * H + j, n);
    const V tc = V::loadu(c + j, n).tanh();
    const V dh = V::loadu(grad_out + j, n) + V::loadu(dh_rec + j, n);
    const V dcv = V::loadu(dc + j, n) + dh * o * (one - tc * tc);
    (dcv * gg * i * (one - i)).store(dg + j, n);
    (dcv * V::loadu(c_prev + j, n) * f * (one - f)).store(dg + H + j, n);
    (dcv * i * (one - gg * gg)).store(dg + 2 * H + j, n);
    (dh * tc * o * (one - o)).store(dg + 3 * H + j, n);
    (dcv * f).store(dc + j, n);
  }
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
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "lmforge::lstm: float32 or float64 only, found ", x.scalar_type());
}

// Forward over x (B, T, In), in time order or reversed. Returns output (B, T, H), h_n and c_n
// (B, H), and for backward the gate activations (B, T, 4H) and cell states (B, T, H).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cpu(
    const Tensor& input, const Tensor& h0_, const Tensor& c0_, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh, bool reverse) {
  // Autograd is the Python registration's business; the inner out= GEMMs must not see it.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_args(input, h0_, c0_, w_ih, w_hh, b_ih, b_hh, 3);
  const Tensor x = input.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const int64_t B = x.size(0), T = x.size(1), In = x.size(2), H = w_hh.size(1);
  // The input projection of every step in one GEMM, both biases folded in; each step then
  // overwrites its slice with the gate activations, so this buffer is also what backward saves.
  Tensor gates = at::addmm(b_ih + b_hh, x.view({B * T, In}), w_ih.t()).view({B, T, 4 * H});
  Tensor output = at::empty({B, T, H}, x.options());
  Tensor cells = at::empty({B, T, H}, x.options());
  Tensor rec = at::empty({B, 4 * H}, x.options());
  // MKL's small-M GEMM runs faster on a row-major (H, 4H) right side than on a transposed view;
  // one copy of W_hh pays for itself over the steps.
  const Tensor w_hh_t = T > 1 ? w_hh.t().contiguous() : w_hh.t();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lmforge_lstm", [&] {
    scalar_t* g = gates.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* cs = cells.data_ptr<scalar_t>();
    const scalar_t* r = rec.const_data_ptr<scalar_t>();
    const scalar_t* c_init = c0.const_data_ptr<scalar_t>();
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s, prev = reverse ? t + 1 : t - 1;
      // h_{t-1} is read in place from the output (row stride T * H), which BLAS takes as is.
      at::mm_out(rec, s == 0 ? h0 : output.select(1, prev), w_hh_t);
      for_blocks(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        const scalar_t* c_prev = s == 0 ? c_init + b * H : cs + (b * T + prev) * H;
        gates_forward(g + (b * T + t) * 4 * H, r + b * 4 * H, c_prev, cs + (b * T + t) * H,
                      out + (b * T + t) * H, H, j0, j1);
      });
    }
  });
  const int64_t last = reverse ? 0 : T - 1;
  Tensor h_n = T > 0 ? output.select(1, last).clone() : h0.clone();
  Tensor c_n = T > 0 ? cells.select(1, last).clone() : c0.clone();
  return {output, h_n, c_n, gates, cells};
}

// Backward through time of lstm_cpu: one fused pass and one GEMM (dh = dgates_t @ W_hh) per
// step, then the input and weight gradients in one GEMM each over all steps. grad_bias is the
// gradient of b_ih and of b_hh alike.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& input, const Tensor& h0, const Tensor& c0_, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const Tensor& gates_, const Tensor& cells_,
    bool reverse) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor x = input.contiguous(), c0 = c0_.contiguous();
  const Tensor grad_output = grad_output_.contiguous();
  const Tensor gates = gates_.contiguous(), cells = cells_.contiguous();
  const int64_t B = x.size(0), T = x.size(1), In = x.size(2), H = w_hh.size(1);
  Tensor dgates = at::empty({B, T, 4 * H}, x.options());
  Tensor dh_rec = grad_h_n.contiguous().clone();
  Tensor dc = grad_c_n.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lmforge_lstm_backward", [&] {
    const scalar_t* g = gates.const_data_ptr<scalar_t>();
    const scalar_t* cs = cells.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* c_init = c0.const_data_ptr<scalar_t>();
    const scalar_t* dhr = dh_rec.const_data_ptr<scalar_t>();
    scalar_t* dcp = dc.data_ptr<scalar_t>();
    scalar_t* dg = dgates.data_ptr<scalar_t>();
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s, prev = reverse ? t + 1 : t - 1;
      for_blocks(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        const int64_t row = b * T + t;
        const scalar_t* c_prev = s == 0 ? c_init + b * H : cs + (b * T + prev) * H;
        gates_backward(g + row * 4 * H, cs + row * H, c_prev, go + row * H, dhr + b * H,
                       dcp + b * H, dg + row * 4 * H, H, j0, j1);
      });
      at::mm_out(dh_rec, dgates.select(1, t), w_hh);
    }
  });
  const Tensor dg2 = dgates.view({B * T, 4 * H});
  Tensor grad_input = at::mm(dg2, w_ih).view({B, T, In});
  Tensor grad_w_ih = at::mm(dg2.t(), x.view({B * T, In}));
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
  Tensor grad_w_hh = at::mm(dg2.t(), h_prev.view({B * T, H}));
  Tensor grad_bias = dg2.sum(0);
  return {grad_input, dh_rec, dc, grad_w_ih, grad_w_hh, grad_bias};
}

// One time step for generation: x (B, In), (h, c) (B, H) -> (h', c'), no state kept for backward.
std::tuple<Tensor, Tensor> lstm_step_cpu(const Tensor& input, const Tensor& h_, const Tensor& c_,
                                         const Tensor& w_ih, const Tensor& w_hh,
                                         const Tensor& b_ih, const Tensor& b_hh) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_args(input, h_, c_, w_ih, w_hh, b_ih, b_hh, 2);
  const Tensor c = c_.contiguous();
  const int64_t B = input.size(0), H = w_hh.size(1);
  Tensor gates = at::addmm(b_ih, input, w_ih.t());
  gates.addmm_(h_, w_hh.t());
  Tensor h_new = at::empty({B, H}, input.options());
  Tensor c_new = at::empty({B, H}, input.options());
  // The bias b_hh goes in as the "recurrent" term of the shared pass, broadcast over rows.
  const Tensor bias = b_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lmforge_lstm_step", [&] {
    scalar_t* g = gates.data_ptr<scalar_t>();
    const scalar_t* bh = bias.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    scalar_t* hn = h_new.data_ptr<scalar_t>();
    scalar_t* cn = c_new.data_ptr<scalar_t>();
    for_blocks(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      gates_forward(g + b * 4 * H, bh, cp + b * H, cn + b * H, hn + b * H, H, j0, j1);
    });
  });
  return {h_new, c_new};
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
