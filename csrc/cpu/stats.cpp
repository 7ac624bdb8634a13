// CPU accumulation ops for layerprof (the `cpp` backend).
//
// Same contracts as layerprof/stats/ops/stats.py:
//   gram_update   S += XᵀX   upper triangle (i <= j) only      rows·d_in²·(1 + 1/nb) FLOPs
//   cross_update  C += XᵀG                                    2·rows·d_in·d_out FLOPs
//   stats_update  both, plus q += ‖G‖², reading X and G once   (fused)
//   sketch_update CΩ += Xᵀ(GΩ)                                 2·rows·k·(d_in + d_out) FLOPs
// for X, G of fp32, bf16 or fp16 and accumulators of fp32 or fp64.
//
// Why it is faster than the torch reference: (1) one parallel pass gathers the unmasked
// rows of X and G, widens them to the accumulator dtype and sums ‖G‖² in fp64 — the
// reference needs a gather, a cast and a reduction, each a full pass; (2) S is computed
// in column blocks that stop at the diagonal, so the Gram costs about half a matrix
// product (the lower triangle is never computed). The block products are BLAS GEMMs
// through ATen, which run on torch's OpenMP thread pool.
#include "../ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace layerprof {
namespace {

void check_acc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor (the cpp backend runs on the CPU)");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (rows × features), got ", t.dim(), "-D");
  auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble, name,
              " must be float32, bfloat16, float16 or float64, got ", st);
}

// Indices of the kept rows (all rows when there is no mask).
std::vector<int64_t> kept_rows(int64_t rows, const c10::optional<at::Tensor>& mask) {
  std::vector<int64_t> idx;
  if (!mask.has_value()) {
    idx.resize(rows);
    for (int64_t i = 0; i < rows; ++i) idx[i] = i;
    return idx;
  }
  const at::Tensor m = mask->contiguous();
  TORCH_CHECK(m.scalar_type() == at::kBool, "mask must be a bool tensor, got ", m.scalar_type());
  TORCH_CHECK(m.dim() == 1 && m.size(0) == rows, "mask must have shape (rows,) = (", rows, ",), got ", m.sizes());
  const bool* p = m.data_ptr<bool>();
  idx.reserve(rows);
  for (int64_t i = 0; i < rows; ++i)
    if (p[i]) idx.push_back(i);
  return idx;
}

template <typename Acc, typename In>
inline Acc widen(In v) {
  if constexpr (std::is_same_v<In, double> || std::is_same_v<In, float>) {
    return static_cast<Acc>(v);
  } else {
    return static_cast<Acc>(static_cast<float>(v));  // exact: fp32 holds every bf16/fp16 value
  }
}

// One parallel pass: Z[:, off:off+d] = widen(x[idx]); returns Σ z² (fp64) when asked.
template <typename In, typename Acc>
double gather_into(const at::Tensor& x, const std::vector<int64_t>& idx, at::Tensor& Z, int64_t off, bool squares) {
  const int64_t d = x.size(1), ldz = Z.size(1);
  const int64_t sx0 = x.stride(0), sx1 = x.stride(1);
  const In* xp = x.data_ptr<In>();
  Acc* zp = Z.data_ptr<Acc>();
  const int64_t n = static_cast<int64_t>(idx.size());
  int64_t nthreads = at::get_num_threads();
  std::vector<double> partial(std::max<int64_t>(nthreads, 1) * 8, 0.0);  // padded against false sharing
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    double acc = 0.0;
    for (int64_t r = begin; r < end; ++r) {
      const In* src = xp + idx[r] * sx0;
      Acc* dst = zp + r * ldz + off;
      if constexpr (std::is_same_v<In, Acc>) {
        if (sx1 == 1 && !squares) {  // same dtype, contiguous row: a plain copy
          std::memcpy(dst, src, d * sizeof(Acc));
          continue;
        }
      }
      if (sx1 == 1) {  // unit stride: the widening loop vectorizes
        for (int64_t c = 0; c < d; ++c) dst[c] = widen<Acc>(src[c]);
      } else {
        for (int64_t c = 0; c < d; ++c) dst[c] = widen<Acc>(src[c * sx1]);
      }
      if (squares) {
        double row = 0.0;
        for (int64_t c = 0; c < d; ++c) row += static_cast<double>(dst[c]) * static_cast<double>(dst[c]);
        acc += row;
      }
    }
    partial[at::get_thread_num() * 8] += acc;
  });
  double total = 0.0;
  for (double v : partial) total += v;
  return total;
}

double gather(const at::Tensor& x, const std::vector<int64_t>& idx, at::Tensor& Z, int64_t off, bool squares) {
  double out = 0.0;
  bool wide = Z.scalar_type() == at::kDouble;
  switch (x.scalar_type()) {
    case at::kFloat:
      out = wide ? gather_into<float, double>(x, idx, Z, off, squares) : gather_into<float, float>(x, idx, Z, off, squares);
      break;
    case at::kBFloat16:
      out = wide ? gather_into<at::BFloat16, double>(x, idx, Z, off, squares)
                 : gather_into<at::BFloat16, float>(x, idx, Z, off, squares);
      break;
    case at::kHalf:
      out = wide ? gather_into<at::Half, double>(x, idx, Z, off, squares) : gather_into<at::Half, float>(x, idx, Z, off, squares);
      break;
    case at::kDouble:
      out = wide ? gather_into<double, double>(x, idx, Z, off, squares) : gather_into<double, float>(x, idx, Z, off, squares);
      break;
    default:
      TORCH_CHECK(false, "unsupported input dtype ", x.scalar_type());
  }
  return out;
}

// S[0:j1, j0:j1] += X[:, 0:j1]ᵀ X[:, j0:j1] for column blocks: the upper triangle plus the
// diagonal blocks, i.e. (1 + 1/nb)/2 of a full Gram.
void gram_upper_blocked(at::Tensor& S, const at::Tensor& X) {
  const int64_t d = X.size(1);
  if (X.size(0) == 0 || d == 0) return;
  // Blocks of at least 64 columns keep each GEMM efficient; at most 8 blocks bound the
  // wasted (below-diagonal) work to 1/16 of a full Gram.
  const int64_t block = std::max<int64_t>(64, (d + 7) / 8);
  for (int64_t j0 = 0; j0 < d; j0 += block) {
    const int64_t j1 = std::min(d, j0 + block);
    at::Tensor out = S.narrow(0, 0, j1).narrow(1, j0, j1 - j0);
    out.addmm_(X.narrow(1, 0, j1).t(), X.narrow(1, j0, j1 - j0));
  }
}

void check_square(const at::Tensor& S, int64_t d) {
  TORCH_CHECK(S.dim() == 2 && S.size(0) == d && S.size(1) == d, "S must be (d_in, d_in) = (", d, ", ", d, "), got ",
              S.sizes());
  TORCH_CHECK(S.stride(1) == 1, "S must have contiguous rows");
}

}  // namespace

void gram_update(at::Tensor S, const at::Tensor& x, const c10::optional<at::Tensor>& mask) {
  check_acc(S, "S");
  check_rows(x, "x");
  check_square(S, x.size(1));
  auto idx = kept_rows(x.size(0), mask);
  if (idx.empty()) return;
  at::Tensor Z = at::empty({static_cast<int64_t>(idx.size()), x.size(1)}, S.options());
  gather(x, idx, Z, 0, false);
  gram_upper_blocked(S, Z);
}

void cross_update(at::Tensor C, const at::Tensor& x, const at::Tensor& g, const c10::optional<at::Tensor>& mask) {
  check_acc(C, "C");
  check_rows(x, "x");
  check_rows(g, "g");
  TORCH_CHECK(x.size(0) == g.size(0), "x and g must have the same rows, got ", x.size(0), " and ", g.size(0));
  TORCH_CHECK(C.dim() == 2 && C.size(0) == x.size(1) && C.size(1) == g.size(1), "C must be (d_in, d_out) = (",
              x.size(1), ", ", g.size(1), "), got ", C.sizes());
  auto idx = kept_rows(x.size(0), mask);
  if (idx.empty()) return;
  const int64_t n = static_cast<int64_t>(idx.size());
  at::Tensor X = at::empty({n, x.size(1)}, C.options()), G = at::empty({n, g.size(1)}, C.options());
  gather(x, idx, X, 0, false);
  gather(g, idx, G, 0, false);
  C.addmm_(X.t(), G);
}

void stats_update(at::Tensor S, at::Tensor C, at::Tensor q, const at::Tensor& x, const at::Tensor& g,
                  const c10::optional<at::Tensor>& mask) {
  check_acc(S, "S");
  check_acc(C, "C");
  check_acc(q, "q");
  check_rows(x, "x");
  check_rows(g, "g");
  TORCH_CHECK(S.scalar_type() == C.scalar_type() && C.scalar_type() == q.scalar_type(),
              "S, C and q must share one accumulator dtype");
  TORCH_CHECK(x.size(0) == g.size(0), "x and g must have the same rows, got ", x.size(0), " and ", g.size(0));
  const int64_t din = x.size(1), dout = g.size(1);
  check_square(S, din);
  TORCH_CHECK(C.dim() == 2 && C.size(0) == din && C.size(1) == dout, "C must be (d_in, d_out) = (", din, ", ", dout,
              "), got ", C.sizes());
  TORCH_CHECK(q.numel() == 1, "q must be a scalar tensor");
  auto idx = kept_rows(x.size(0), mask);
  if (idx.empty()) return;
  // The kept rows of X and G, widened, in one pass over each input (q comes with G's pass).
  const int64_t n = static_cast<int64_t>(idx.size());
  at::Tensor X = at::empty({n, din}, S.options()), G = at::empty({n, dout}, S.options());
  gather(x, idx, X, 0, false);
  double g2 = gather(g, idx, G, 0, true);
  gram_upper_blocked(S, X);
  C.addmm_(X.t(), G);
  q.add_(g2);
}

void sketch_update(at::Tensor CO, const at::Tensor& x, const at::Tensor& g, const at::Tensor& omega,
                   const c10::optional<at::Tensor>& mask) {
  check_acc(CO, "C_sketch");
  check_rows(x, "x");
  check_rows(g, "g");
  TORCH_CHECK(omega.dim() == 2 && omega.size(0) == g.size(1), "omega must be (d_out, k), got ", omega.sizes());
  TORCH_CHECK(CO.dim() == 2 && CO.size(0) == x.size(1) && CO.size(1) == omega.size(1),
              "C_sketch must be (d_in, k), got ", CO.sizes());
  auto idx = kept_rows(x.size(0), mask);
  if (idx.empty()) return;
  // Project first (GΩ over all rows is rows·d_out·k work either way), then gather only X
  // and the narrow GΩ: G itself is never copied.
  at::Tensor go = at::mm(g.to(CO.scalar_type()), omega.to(CO.scalar_type()));
  const int64_t din = x.size(1), k = go.size(1);
  at::Tensor Z = at::empty({static_cast<int64_t>(idx.size()), din + k}, CO.options());
  gather(x, idx, Z, 0, false);
  gather(go, idx, Z, din, false);
  CO.addmm_(Z.narrow(1, 0, din).t(), Z.narrow(1, din, k));
}

}  // namespace layerprof
