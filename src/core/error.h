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

// An error every rank of a distributed job meets alike (a setting that does not fit the job, a
// config that differs between ranks): rank 0 alone reports it and ends the job, so that it reads
// once (docs/DISTRIBUTED.md).
struct JobError : Error {
  using Error::Error;
};
[[noreturn]] inline void fail_job(const std::string& msg) { throw JobError(msg); }

}  // namespace moe

#define MOE_CHECK(cond, msg)             \
  do {                                   \
    if (!(cond)) ::moe::fail(msg);       \
  } while (0)
