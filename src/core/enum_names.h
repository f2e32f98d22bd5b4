// enum_names.h — closed sets of choices (router kinds, drop policies, precisions, FFN kinds, …) as
// enums whose names are written once, beside the enum:
//
//   enum class DropPolicy { position, probs };
//   template <> struct EnumNames<DropPolicy> {
//     static constexpr const char* what = "drop policy";
//     static constexpr std::array<const char*, 2> names = {"position", "probs"};
//   };
//
// The config readers parse them by these names, JSON writes them, and `--help` lists them.
#pragma once
#include <array>
#include <cstddef>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/error.h"

namespace moe {

template <class E>
struct EnumNames;  // specialised beside each enum: `what` (in words) and `names` (in enum order)

template <class E>
concept NamedEnum = std::is_enum_v<E> && requires {
  EnumNames<E>::names;
  EnumNames<E>::what;
};

template <NamedEnum E>
const char* name_of(E e) {
  return EnumNames<E>::names[static_cast<size_t>(e)];
}

template <NamedEnum E>
std::optional<E> enum_from_name(std::string_view s) {
  const auto& names = EnumNames<E>::names;
  for (size_t i = 0; i < names.size(); ++i)
    if (s == names[i]) return static_cast<E>(i);
  return std::nullopt;
}

// Every name, joined by sep: "topk_softmax | softmax_topk | …" for --help, ", " for messages.
template <NamedEnum E>
std::string enum_choices(const char* sep = " | ") {
  std::string s;
  for (const char* n : EnumNames<E>::names) s += (s.empty() ? "" : sep) + std::string(n);
  return s;
}

// The enum named s, or moe::Error "<field> = "<s>" is not a known <what>; use one of a, b, c".
template <NamedEnum E>
E parse_enum(std::string_view s, const std::string& field) {
  if (const std::optional<E> e = enum_from_name<E>(s)) return *e;
  fail(field + " = \"" + std::string(s) + "\" is not a known " + EnumNames<E>::what + "; use one of " +
       enum_choices<E>(", "));
}

// The enum that environment variable `var` names, or nullopt when it is unset; any other value is a
// JobError "<var> = "<s>": use "a" or "b" (or unset it for the CPU's default)". For the switches
// (MOE_SGEMM, MOE_BF16_KERNELS) that override a choice made by CPU.
template <NamedEnum E>
std::optional<E> enum_from_env(const char* var) {
  const char* env = std::getenv(var);
  if (env == nullptr) return std::nullopt;
  if (const std::optional<E> e = enum_from_name<E>(env)) return e;
  const auto& names = EnumNames<E>::names;
  std::string msg = std::string(var) + " = \"" + env + "\": use ";
  for (size_t i = 0; i < names.size(); ++i) {  // appended piece by piece: GCC 12 warns (-Wrestrict) on "\"" + string
    if (i > 0) msg += i + 1 == names.size() ? " or " : ", ";
    msg += '"';
    msg += names[i];
    msg += '"';
  }
  fail_job(msg + " (or unset it for the CPU's default)");
}

}  // namespace moe
