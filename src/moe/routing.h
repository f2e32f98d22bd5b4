// routing.h — what a router decides for T tokens, the one type shared by the routers, the balance
// losses, the dispatch plan and the routing metrics; and the capacity formula they share.
#pragma once
#include <cstdint>
#include <vector>

namespace moe {

// The routing of T tokens as k slots per token. Token-choice routers fill every slot, best first.
// Expert choice uses one slot per expert (k = E, slot e holds expert e or -1 when expert e did not
// take the token): a token may reach any number of experts, zero included.
struct Routing {
  int T = 0, k = 0;
  std::vector<int32_t> expert;  // (T, k) chosen experts, -1 for an empty slot
  std::vector<float> gate;      // (T, k) their gates (0 for an empty slot)
  bool expert_slots = false;    // slot e is expert e (expert choice)

  // The token's first expert: slot 0 for token choice, the largest gate for expert choice; -1: none.
  int32_t first(int t) const;
  // The experts of token t, in slot order, empty slots left out.
  std::vector<int32_t> experts_of(int t) const;
};

// Slots per expert, C = ceil(cf·T·k/E) over the post-granularity E and k; -1 when cf <= 0 (dropless).
int64_t expert_capacity(float capacity_factor, int T, int k, int E);

}  // namespace moe
