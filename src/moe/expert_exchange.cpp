#include "moe/expert_exchange.h"

#include <cstring>

#include "core/bf16.h"
#include "core/error.h"
#include "core/parallel.h"

namespace moe {

ExpertExchange::ExpertExchange(Comm* c, int experts_total) : comm(c), P(c->size()), E(experts_total) {
  if (E % P != 0)
    fail_job("expert parallelism: the " + std::to_string(E) + " routed experts of a layer (model.num_local_experts × "
         "model.granularity) do not divide among " + std::to_string(P) + " ranks; run a number of ranks that divides " +
         std::to_string(E) + " (train.expert_parallel and mpirun -np)");
  El = E / P;
  first = c->rank() * El;
}

void ExpertExchange::plan(const DispatchPlan& p) {
  // counts[s·El + e]: rows rank s sends to my expert e.
  std::vector<int64_t> mine(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) mine[e] = p.counts[e];
  recv_counts_.assign(static_cast<size_t>(P) * El, 0);
  comm->alltoall(mine.data(), sizeof(int64_t) * El, recv_counts_.data());
  send_rows_.assign(static_cast<size_t>(P), 0);
  recv_rows_.assign(static_cast<size_t>(P), 0);
  recv_total_ = 0;
  for (int r = 0; r < P; ++r) {
    send_rows_[r] = p.offsets[static_cast<size_t>(r + 1) * El] - p.offsets[static_cast<size_t>(r) * El];
    for (int e = 0; e < El; ++e) recv_rows_[r] += recv_counts_[static_cast<size_t>(r) * El + e];
    recv_total_ += recv_rows_[r];
  }
  // Block (s, e) of recv_counts_[s·El + e] rows: its first row in rank-major and in expert-major order.
  const size_t nb = static_cast<size_t>(P) * El;
  at_rank_.resize(nb);
  at_expert_.resize(nb);
  int64_t o = 0;
  for (size_t b = 0; b < nb; ++b) {
    at_rank_[b] = o;
    o += recv_counts_[b];
  }
  expert_offsets_.assign(static_cast<size_t>(El) + 1, 0);
  o = 0;
  for (int e = 0; e < El; ++e) {
    for (int s = 0; s < P; ++s) {
      at_expert_[static_cast<size_t>(s) * El + e] = o;
      o += recv_counts_[static_cast<size_t>(s) * El + e];
    }
    expert_offsets_[e + 1] = o;
  }
}

template <class T>
void ExpertExchange::reorder(const T* in, T* out, int width, bool to_expert_major) const {
  parallel_for_dynamic(recv_counts_.size(), [&](size_t b) {
    const int64_t from = to_expert_major ? at_rank_[b] : at_expert_[b];
    const int64_t to = to_expert_major ? at_expert_[b] : at_rank_[b];
    std::memcpy(out + to * width, in + from * width, sizeof(T) * static_cast<size_t>(recv_counts_[b]) * width);
  });
}

template <class T>
void ExpertExchange::to_experts(const T* send, int width, T* out) {
  staging_.resize(sizeof(T) * static_cast<size_t>(recv_total_) * width);
  alltoallv_rows(*comm, send, send_rows_, staging_.data(), recv_rows_, sizeof(T) * width);
  reorder(reinterpret_cast<const T*>(staging_.data()), out, width, true);
}

template <class T>
void ExpertExchange::back(const T* in, int width, T* out) {
  staging_.resize(sizeof(T) * static_cast<size_t>(recv_total_) * width);
  T* staged = reinterpret_cast<T*>(staging_.data());
  reorder(in, staged, width, false);
  alltoallv_rows(*comm, staged, recv_rows_, out, send_rows_, sizeof(T) * width);
}

template void ExpertExchange::to_experts<float>(const float*, int, float*);
template void ExpertExchange::to_experts<bf16_t>(const bf16_t*, int, bf16_t*);
template void ExpertExchange::back<float>(const float*, int, float*);
template void ExpertExchange::back<bf16_t>(const bf16_t*, int, bf16_t*);

}  // namespace moe
