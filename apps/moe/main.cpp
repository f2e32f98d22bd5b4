// main.cpp — `moe`: build, train, measure and run Mixture-of-Experts language models.
#include <cstdio>
#include <exception>

#include "apps/moe/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moe — build, train, measure and run Mixture-of-Experts models"};
  app.require_subcommand(1);
  moe::cli::add_lm(app);
  moe::cli::add_bench(app);
  moe::cli::add_routing(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
