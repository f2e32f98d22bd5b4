// launcher.cpp — what the MPI launcher told this process, read the same with and without MPI.
#include <algorithm>
#include <cstdlib>

#include "dist/world.h"

namespace moe {

int launcher_world_size() {
  // OpenMPI's mpirun, PMIx launchers (srun, prterun), PMI-1/2 (MPICH's hydra, srun), MPICH's own.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (const char* s = std::getenv(v)) return std::max(1, std::atoi(s));
  return 1;
}

}  // namespace moe
