#include "model/dense_ffn.h"

#include "core/error.h"

namespace moe {

DenseFfn::DenseFfn(int d_model, int hidden, uint64_t seed, uint64_t stream, float init_std, bool bf16)
    : bank(1, d_model, hidden, seed, stream, init_std) {
  bank.bf16 = bf16;
}

void DenseFfn::forward(const float* x, int T, float* y, const FfnContext&) {
  x_ = x;
  T_ = T;
  bank.forward(x, {0, T}, y);
}

void DenseFfn::backward(const float* dy, float* dx) {
  MOE_CHECK(x_ != nullptr, "dense ffn: backward called before forward");
  bank.backward(x_, dy, {0, T_}, nullptr, dx, nullptr);
}

void DenseFfn::collect_params(std::vector<Param>& out, const std::string& prefix) { bank.params(out, prefix); }

int64_t DenseFfn::num_params() const { return 3LL * bank.h * bank.d; }

}  // namespace moe
