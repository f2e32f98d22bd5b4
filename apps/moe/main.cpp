// main.cpp — `moe`: build, train, measure and run Mixture-of-Experts language models.
#include <chrono>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <thread>

#include "apps/moe/commands.h"
#include "core/error.h"
#include "dist/world.h"

namespace {

// An error of one rank of a distributed job (docs/DISTRIBUTED.md): the rank says it, naming itself
// unless it is rank 0, and ends the whole job, whose other ranks may wait for it in a collective call.
// An error every rank meets alike (JobError) is said by rank 0 alone; the others wait to be ended by
// it (and speak after a while if rank 0 has not, which then means it did not meet it).
[[noreturn]] void end_job(const moe::Comm& w, const char* what, bool everyone) {
  if (everyone && w.rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(30));
  if (w.rank() == 0)
    std::fprintf(stderr, "moe: error: %s\n", what);
  else
    std::fprintf(stderr, "moe: error: rank %d of %d: %s\n", w.rank(), w.size(), what);
  std::fflush(stderr);
  moe::abort_world(1);
}

int run(int argc, char** argv) {
  CLI::App app{"moe — build, train, measure and run Mixture-of-Experts models"};
  app.require_subcommand(1);
  moe::cli::add_data(app);
  moe::cli::add_train(app);
  moe::cli::add_eval(app);
  moe::cli::add_generate(app);
  moe::cli::add_inspect(app);
  moe::cli::add_compare(app);
  moe::cli::add_bench(app);
  moe::cli::add_keys(app);
  moe::cli::add_sweep(app);
  moe::cli::add_fit(app);
  moe::cli::add_report(app);
  moe::cli::add_expand(app);
  moe::cli::add_lifelong(app);
  moe::cli::add_import(app);
  moe::cli::add_logits(app);
  moe::cli::add_export(app);
  moe::cli::add_tokenize(app);
  // Exit codes: 0 done, 1 an error of the input or the run (one line naming the field and the fix),
  // 2 a usage error of the command line.
  try {
    // Several ranks train one model; every other command is one process's work.
    if (moe::distributed(moe::world()) && (argc < 2 || std::string(argv[1]) != "train"))
      moe::fail_job(std::string("moe ") + (argc < 2 ? "" : argv[1]) + " runs as one process; of the commands only `moe train` "
                    "runs under mpirun with several ranks");
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // Every rank parses the same command line: rank 0 says it.
    if (const moe::Comm* w = moe::world(); !moe::distributed(w) || w->rank() == 0)
      std::fprintf(stderr, "moe: usage error: %s; see moe --help or moe COMMAND --help\n", e.what());
    return 2;
  } catch (const moe::Error& e) {
    if (const moe::Comm* w = moe::world(); moe::distributed(w)) end_job(*w, e.what(), dynamic_cast<const moe::JobError*>(&e));
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "moe: error: out of memory; lower the model's sizes (model.hidden_size, model.num_local_experts, "
                         "model.peer.n_keys, ...) or train.batch_size\n");
    if (moe::distributed(moe::world())) moe::abort_world(1);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: error: unexpected failure (%s); please report it with the command that caused it\n", e.what());
    if (const moe::Comm* w = moe::world(); moe::distributed(w)) moe::abort_world(1);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Launched by mpirun with several ranks: MPI starts here, before anything else runs.
  try {
    moe::init_world(&argc, &argv);
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  }
  const int code = run(argc, argv);
  moe::finalize_world();
  return code;
}
