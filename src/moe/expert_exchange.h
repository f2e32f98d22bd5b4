// expert_exchange.h — expert parallelism's all-to-all (docs/DISTRIBUTED.md): the rows a rank's
// dispatch plan made for every expert go to the rank that holds the expert, and the experts'
// outputs come back in the same order.
//
//   rank r holds experts [r·El, (r+1)·El) of E (El = E/P)
//   plan()     counts first: an all-to-all of per-expert row counts, so every rank knows how many
//              rows it sends to and receives from each rank, and where each expert's rows start
//   to_experts rows in the sender's plan order (grouped by destination, then expert) → MPI_Alltoallv →
//              the received rows reordered expert by expert (within an expert: by sending rank, i.e.
//              in the token order of the whole batch, as one process would hold them)
//   back       the reverse: expert-major rows → per sending rank → MPI_Alltoallv → the sender's plan order
//
// The same plan serves the forward (x out, y back) and the backward (dy out, dx back).
#pragma once
#include <cstdint>
#include <vector>

#include "core/comm.h"
#include "moe/dispatch.h"

namespace moe {

class ExpertExchange {
 public:
  ExpertExchange() = default;
  ExpertExchange(Comm* comm, int experts_total);

  Comm* comm = nullptr;
  int P = 1, E = 0, El = 0, first = 0;  // ranks, experts, experts per rank, this rank's first expert

  // Exchanges the counts of plan p (over all E experts, this rank's tokens).
  void plan(const DispatchPlan& p);
  // Rows this rank receives for its own experts (it sends its plan's rows).
  int64_t rows_received() const { return recv_total_; }
  // (El+1) first received row of each local expert, in expert-major order.
  const std::vector<int64_t>& expert_offsets() const { return expert_offsets_; }

  // send: (rows_sent, width) in plan order → out: (rows_received, width), expert-major.
  template <class T>
  void to_experts(const T* send, int width, T* out);
  // in: (rows_received, width), expert-major → out: (rows_sent, width) in plan order.
  template <class T>
  void back(const T* in, int width, T* out);

 private:
  std::vector<int64_t> send_rows_, recv_rows_;  // (P) rows to / from each rank
  std::vector<int64_t> recv_counts_;            // (P·El) rows from rank s for local expert e
  std::vector<int64_t> expert_offsets_;         // (El+1)
  std::vector<int64_t> at_rank_, at_expert_;    // (P·El) first row of block (s, e) rank-major, expert-major
  int64_t recv_total_ = 0;
  std::vector<char> staging_;                   // received rows in rank order
  // Copies blocks between rank-major (s, e) and expert-major (e, s) order.
  template <class T>
  void reorder(const T* in, T* out, int width, bool to_expert_major) const;
};

}  // namespace moe
