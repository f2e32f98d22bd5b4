// comm.h — what the layers and the trainer need of a group of processes that train one model
// together (expert and data parallelism, docs/DISTRIBUTED.md), without knowing how the bytes travel.
// The one implementation is MPI's (src/dist/); a single process passes no Comm at all (nullptr), so
// nothing here runs unless a job has several ranks.
//
// Every call is collective: each rank of the group makes the same calls in the same order. Counts
// and sizes are in bytes unless the name says otherwise. stats adds up what each call moved and how
// long it took, for the metrics line of each step.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe {

struct CommStats {
  int64_t bytes_sent = 0;      // to other ranks (what a rank keeps for itself is not counted)
  int64_t bytes_received = 0;  // from other ranks
  double seconds = 0.0;        // wall time inside communication calls
  int64_t calls = 0;
  CommStats operator-(const CommStats& o) const {
    return {bytes_sent - o.bytes_sent, bytes_received - o.bytes_received, seconds - o.seconds, calls - o.calls};
  }
  CommStats operator+(const CommStats& o) const {
    return {bytes_sent + o.bytes_sent, bytes_received + o.bytes_received, seconds + o.seconds, calls + o.calls};
  }
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // x ← Σ over ranks of x (every rank gets the same sum).
  virtual void allreduce_sum(float* x, size_t n) = 0;
  virtual void allreduce_sum(double* x, size_t n) = 0;
  virtual void allreduce_sum(int64_t* x, size_t n) = 0;
  // Non-blocking x ← Σ over ranks of x: started now, done after wait_all() (x is not to be touched
  // until then). Every rank starts the same ones in the same order.
  virtual void iallreduce_sum(float* x, size_t n) = 0;
  // Lets started non-blocking calls move on (MPI progresses them only inside its calls).
  virtual void progress() = 0;
  // Completes every non-blocking call started.
  virtual void wait_all() = 0;
  // x ← max over ranks of x.
  virtual void allreduce_max(int64_t* x, size_t n) = 0;
  // recv (size()·bytes) ← every rank's `bytes` bytes of send, in rank order.
  virtual void allgather(const void* send, size_t bytes, void* recv) = 0;
  // Personalised exchange: send holds, in rank order, send_bytes[r] bytes for rank r; recv gets, in
  // rank order, recv_bytes[r] bytes from rank r (the caller knows them, e.g. from alltoall of counts).
  virtual void alltoallv(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>& recv_bytes) = 0;
  // recv (size()·bytes) ← send[r·bytes, (r+1)·bytes) of every rank r, i.e. rank r's block for me.
  virtual void alltoall(const void* send, size_t bytes, void* recv) = 0;
  virtual void broadcast(void* buf, size_t bytes, int root) = 0;
  // On root: recv ← every rank's send (bytes_of[r] bytes from rank r, in rank order); bytes_of and
  // recv are read only on root.
  virtual void gatherv(const void* send, size_t bytes, void* recv, const std::vector<size_t>& bytes_of, int root) = 0;
  virtual void barrier() = 0;

  CommStats stats;
};

// The element-count form of alltoallv for rows of `row_bytes` bytes each.
inline void alltoallv_rows(Comm& c, const void* send, const std::vector<int64_t>& send_rows, void* recv,
                           const std::vector<int64_t>& recv_rows, size_t row_bytes) {
  std::vector<size_t> sb(send_rows.size()), rb(recv_rows.size());
  for (size_t r = 0; r < sb.size(); ++r) sb[r] = static_cast<size_t>(send_rows[r]) * row_bytes;
  for (size_t r = 0; r < rb.size(); ++r) rb[r] = static_cast<size_t>(recv_rows[r]) * row_bytes;
  c.alltoallv(send, sb, recv, rb);
}

// True when c is a group of more than one process.
inline bool distributed(const Comm* c) { return c != nullptr && c->size() > 1; }

}  // namespace moe
