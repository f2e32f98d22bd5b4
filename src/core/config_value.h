// config_value.h — config fields to and from JSON, checked. Every config struct lists its fields once
// (a static `visit_fields(Self& c, V&& v)` that calls v(key, field, meaning) per field); the TOML and
// JSON readers and writers (train/run_config.cpp), MoeConfig::to_json and `moe keys` are generated
// from those lists through these two functions, so a field has one name everywhere.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "core/enum_names.h"
#include "core/error.h"

namespace moe {

// A JSON value as the field's type V: integers only from integers within V's range (no wrap, no
// truncation of 8.9 to 8), floats from finite numbers within float's range, strings from strings,
// booleans from booleans, enums from their names, lists element by element. Errors name the key and
// say what it needs.
template <class V>
V config_value(const nlohmann::json& v, const std::string& key) {
  if constexpr (std::is_same_v<V, bool>) {
    if (!v.is_boolean()) fail("key \"" + key + "\" must be true or false, not " + v.dump());
    return v.get<bool>();
  } else if constexpr (NamedEnum<V>) {
    if (!v.is_string()) fail("key \"" + key + "\" must be one of " + enum_choices<V>(", ") + ", not " + v.dump());
    return parse_enum<V>(v.get<std::string>(), "key \"" + key + "\"");
  } else if constexpr (std::is_integral_v<V>) {
    std::string range = "[";  // (built step by step: g++ 12 warns falsely on "literal" + string&&)
    range += std::to_string(std::numeric_limits<V>::min());
    range += ", ";
    range += std::to_string(std::numeric_limits<V>::max());
    range += "]";
    if (!v.is_number_integer()) fail("key \"" + key + "\" must be a whole number in " + range + ", not " + v.dump());
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<V>::max()))
        fail("key \"" + key + "\" = " + v.dump() + " is out of range; it must be in " + range);
      return static_cast<V>(u);
    }
    const int64_t i = v.get<int64_t>();
    if ((std::is_unsigned_v<V> && i < 0) ||
        (!std::is_unsigned_v<V> && (i < static_cast<int64_t>(std::numeric_limits<V>::min()) ||
                                    i > static_cast<int64_t>(std::numeric_limits<V>::max()))))
      fail("key \"" + key + "\" = " + v.dump() + " is out of range; it must be in " + range);
    return static_cast<V>(i);
  } else if constexpr (std::is_floating_point_v<V>) {
    if (!v.is_number()) fail("key \"" + key + "\" must be a number, not " + v.dump());
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) > static_cast<double>(std::numeric_limits<V>::max())) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "%g", d);
      fail("key \"" + key + "\" = " + buf + " is not a finite number a float can hold");
    }
    return static_cast<V>(d);
  } else if constexpr (std::is_same_v<V, std::string>) {
    if (!v.is_string()) fail("key \"" + key + "\" must be a string, not " + v.dump());
    return v.get<std::string>();
  } else {  // lists of integers
    if (!v.is_array()) fail("key \"" + key + "\" must be a list, not " + v.dump());
    V out;
    for (const nlohmann::json& e : v) out.push_back(config_value<typename V::value_type>(e, key));
    return out;
  }
}

// A field's value as JSON (enums by name).
template <class V>
nlohmann::json config_json(const V& v) {
  if constexpr (NamedEnum<V>)
    return name_of(v);
  else
    return nlohmann::json(v);
}

// The type of a field in words, for `moe keys`: "integer", "number", "true/false", "string", "list of
// integers", or the choices of an enum.
template <class V>
std::string config_type(const V&) {
  if constexpr (std::is_same_v<V, bool>) return "true/false";
  else if constexpr (NamedEnum<V>) return enum_choices<V>();
  else if constexpr (std::is_integral_v<V>) return "integer";
  else if constexpr (std::is_floating_point_v<V>) return "number";
  else if constexpr (std::is_same_v<V, std::string>) return "string";
  else return "list of integers";
}

}  // namespace moe
