// main.cpp — `moe`: build, train, measure and run Mixture-of-Experts language models.
#include <cstdio>
#include <exception>
#include <new>

#include "apps/moe/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
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
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "moe: usage error: %s; see moe --help or moe COMMAND --help\n", e.what());
    return 2;
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "moe: error: out of memory; lower the model's sizes (model.hidden_size, model.num_local_experts, "
                         "model.peer.n_keys, ...) or train.batch_size\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: error: unexpected failure (%s); please report it with the command that caused it\n", e.what());
    return 1;
  }
  return 0;
}
