#include "nn/ffn.h"

namespace moe {

std::vector<Param> Ffn::params() {
  std::vector<Param> out;
  collect_params(out, "");
  return out;
}

std::vector<SparseParam> Ffn::sparse_params() {
  std::vector<SparseParam> out;
  collect_sparse_params(out, "");
  return out;
}

void Ffn::zero_grad() {
  for (Param& p : params()) p.grad->zero();
  for (SparseParam& p : sparse_params()) p.grad->clear();
}

}  // namespace moe
