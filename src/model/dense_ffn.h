// dense_ffn.h — the dense SwiGLU FFN of a block, an Ffn (nn/ffn.h): W2·(silu(W1·x) ⊙ W3·x) over every
// token, run as an ExpertBank (moe/experts.h) of one expert, so it shares the experts' GEMMs and their
// mixed-precision path. Parameter names: w1, w3, w2 (under the block's "mlp." prefix).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/experts.h"
#include "nn/ffn.h"

namespace moe {

class DenseFfn : public Ffn {
 public:
  DenseFfn(int d_model, int hidden, uint64_t seed, uint64_t stream, float init_std, bool bf16);
  ExpertBank bank;  // E = 1

  void forward(const float* x, int T, float* y, const FfnContext& ctx) override;
  void backward(const float* dy, float* dx) override;
  void collect_params(std::vector<Param>& out, const std::string& prefix) override;
  int64_t num_params() const override;
  int64_t num_active_params() const override { return num_params(); }
  double flops_per_token() const override { return 6.0 * static_cast<double>(num_params()); }
  void pack_weights(WeightFormat f) override { bank.pack(f); }
  int64_t packed_active_params() const override { return bank.packed() ? num_params() : 0; }
  double packed_active_bytes() const override { return static_cast<double>(bank.packed_bytes_per_expert()); }

 private:
  const float* x_ = nullptr;
  int T_ = 0;
};

}  // namespace moe
