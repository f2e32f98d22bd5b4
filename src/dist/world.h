// world.h — the processes of one job: MPI's COMM_WORLD when `moe` was launched by mpirun (or
// another MPI launcher), nothing otherwise (docs/DISTRIBUTED.md).
//
// Built with MPI (CMake found it) `moe` initialises MPI only when a launcher started it, so a plain
// `moe train` stays a single process with no MPI start-up. Built without MPI the same calls say so:
// asking for several ranks is then an error that names the fix.
#pragma once
#include <memory>
#include <string>

#include "core/comm.h"

namespace moe {

// Whether this build has MPI.
bool built_with_mpi();
// Ranks the launcher says this job has (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_SIZE...); 1 when none.
int launcher_world_size();
// The job's ranks: initialises MPI when a launcher started this process with more than one rank
// (errors are returned to the caller, not fatal), and returns its COMM_WORLD; nullptr for a single
// process. Throws moe::Error when the launcher asks for several ranks and this build has no MPI.
Comm* init_world(int* argc, char*** argv);
// The Comm init_world made, or nullptr.
Comm* world();
// Ends the whole job from this rank after an error it printed (MPI_Abort): the other ranks may be
// waiting in a collective call that would never return.
[[noreturn]] void abort_world(int code);
// MPI_Finalize when MPI was initialised (at the end of main).
void finalize_world();

}  // namespace moe
