// error.h — the one exception type of moe.cpp and the checks that throw it.
// Every message is one line that names the offending field or value and says how to fix it.
#pragma once
#include <stdexcept>
#include <string>

namespace moe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

}  // namespace moe

#define MOE_CHECK(cond, msg)             \
  do {                                   \
    if (!(cond)) ::moe::fail(msg);       \
  } while (0)
