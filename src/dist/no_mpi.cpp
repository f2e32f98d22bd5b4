// no_mpi.cpp — world.h in a build without MPI: always a single process.
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "dist/world.h"

namespace moe {

bool built_with_mpi() { return false; }

Comm* init_world(int* /*argc*/, char*** /*argv*/) {
  if (const int n = launcher_world_size(); n > 1)
    fail("a launcher started " + std::to_string(n) + " ranks, but this moe was built without MPI: install libopenmpi-dev "
         "(scripts/setup.sh does) and build again, or run a single process");
  return nullptr;
}

Comm* world() { return nullptr; }

[[noreturn]] void abort_world(int code) { std::exit(code); }

void finalize_world() {}

}  // namespace moe
