// mpi_world.cpp — world.h over MPI (OpenMPI from Debian; any MPI-3 library works).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "dist/world.h"

namespace moe {

namespace {

using clock_type = std::chrono::steady_clock;

class MpiComm final : public Comm {
 public:
  MpiComm() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(float* x, size_t n) override { reduce(x, n, MPI_FLOAT, MPI_SUM, sizeof(float)); }
  void allreduce_sum(double* x, size_t n) override { reduce(x, n, MPI_DOUBLE, MPI_SUM, sizeof(double)); }
  void allreduce_sum(int64_t* x, size_t n) override { reduce(x, n, MPI_INT64_T, MPI_SUM, sizeof(int64_t)); }
  void allreduce_max(int64_t* x, size_t n) override { reduce(x, n, MPI_INT64_T, MPI_MAX, sizeof(int64_t)); }

  void iallreduce_sum(float* x, size_t n) override {
    Timed t(this, ring_bytes(n, sizeof(float)), ring_bytes(n, sizeof(float)));
    in_pieces(n, [&](size_t i, int m) {
      MPI_Request r;
      check(MPI_Iallreduce(MPI_IN_PLACE, x + i, m, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
      pending_.push_back(r);
    });
  }
  void progress() override {
    if (pending_.empty()) return;
    Timed t(this, 0, 0);
    int done = 0;
    check(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) pending_.clear();
  }
  void wait_all() override {
    Timed t(this, 0, 0);
    check(MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    pending_.clear();
  }
  void allgather(const void* send, size_t bytes, void* recv) override {
    Timed t(this, bytes * (size_ - 1), bytes * (size_ - 1));
    check(MPI_Allgather(send, count(bytes), MPI_BYTE, recv, count(bytes), MPI_BYTE, MPI_COMM_WORLD), "MPI_Allgather");
  }
  void alltoall(const void* send, size_t bytes, void* recv) override {
    Timed t(this, bytes * (size_ - 1), bytes * (size_ - 1));
    check(MPI_Alltoall(send, count(bytes), MPI_BYTE, recv, count(bytes), MPI_BYTE, MPI_COMM_WORLD), "MPI_Alltoall");
  }
  void alltoallv(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                 const std::vector<size_t>& recv_bytes) override {
    std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
    size_t so = 0, ro = 0, sent = 0, received = 0;
    for (int r = 0; r < size_; ++r) {
      sc[r] = count(send_bytes[r]);
      rc[r] = count(recv_bytes[r]);
      sd[r] = count(so);
      rd[r] = count(ro);
      so += send_bytes[r];
      ro += recv_bytes[r];
      if (r != rank_) {
        sent += send_bytes[r];
        received += recv_bytes[r];
      }
    }
    Timed t(this, sent, received);
    check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, MPI_COMM_WORLD),
          "MPI_Alltoallv");
  }
  void broadcast(void* buf, size_t bytes, int root) override {
    Timed t(this, rank_ == root ? bytes * (size_ - 1) : 0, rank_ == root ? 0 : bytes);
    check(MPI_Bcast(buf, count(bytes), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
  }
  void gatherv(const void* send, size_t bytes, void* recv, const std::vector<size_t>& bytes_of, int root) override {
    std::vector<int> rc(size_), rd(size_);
    size_t off = 0, received = 0;
    if (rank_ == root)
      for (int r = 0; r < size_; ++r) {
        rc[r] = count(bytes_of[r]);
        rd[r] = count(off);
        off += bytes_of[r];
        if (r != root) received += bytes_of[r];
      }
    Timed t(this, rank_ == root ? 0 : bytes, received);
    check(MPI_Gatherv(send, count(bytes), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, root, MPI_COMM_WORLD),
          "MPI_Gatherv");
  }
  void barrier() override {
    Timed t(this, 0, 0);
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

 private:
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> pending_;  // started non-blocking calls

  // Adds a call's bytes and time to stats.
  struct Timed {
    Timed(MpiComm* c, size_t sent, size_t received) : c_(c), t0_(clock_type::now()) {
      c_->stats.bytes_sent += static_cast<int64_t>(sent);
      c_->stats.bytes_received += static_cast<int64_t>(received);
      ++c_->stats.calls;
    }
    ~Timed() { c_->stats.seconds += std::chrono::duration<double>(clock_type::now() - t0_).count(); }
    Timed(const Timed&) = delete;
    Timed& operator=(const Timed&) = delete;
    MpiComm* c_;
    clock_type::time_point t0_;
  };

  void reduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, size_t elem) {
    Timed t(this, ring_bytes(n, elem), ring_bytes(n, elem));
    in_pieces(n, [&](size_t i, int m) {
      check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(x) + i * elem, m, type, op, MPI_COMM_WORLD), "MPI_Allreduce");
    });
  }
  // Bytes a rank sends (and receives) in a ring all-reduce of n elements: 2·(P−1)/P of the buffer.
  size_t ring_bytes(size_t n, size_t elem) const {
    return 2 * n * elem * static_cast<size_t>(size_ - 1) / static_cast<size_t>(size_);
  }
  // MPI counts are int: fn(first element, count) for pieces of at most 2^28 elements.
  template <class F>
  static void in_pieces(size_t n, F&& fn) {
    constexpr size_t kPiece = size_t{1} << 28;
    for (size_t i = 0; i < n; i += kPiece) fn(i, static_cast<int>(std::min(kPiece, n - i)));
  }
  static int count(size_t bytes) {
    if (bytes > static_cast<size_t>(INT_MAX))
      fail("a message of " + std::to_string(bytes) + " bytes is above MPI's 2 GiB count limit; lower train.batch_size "
           "(tokens per rank) or raise train.expert_parallel");
    return static_cast<int>(bytes);
  }
  static void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    fail(std::string(what) + " failed: " + std::string(text, static_cast<size_t>(len)) +
         " (a rank has died or the network failed; the job stops)");
  }
};

std::unique_ptr<MpiComm> g_world;

}  // namespace

bool built_with_mpi() { return true; }

Comm* init_world(int* argc, char*** argv) {
  if (g_world) return g_world.get();
  if (launcher_world_size() <= 1) return nullptr;
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    fail("MPI_Init failed; run under mpirun from the same MPI this moe was built with (OpenMPI)");
  // Errors come back as return codes (MpiComm::check turns them into moe::Error, then abort_world).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_world = std::make_unique<MpiComm>();
  return g_world.get();
}

Comm* world() { return g_world.get(); }

void abort_world(int code) {
  if (g_world) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

void finalize_world() {
  if (!g_world) return;
  g_world.reset();
  MPI_Finalize();
}

}  // namespace moe
