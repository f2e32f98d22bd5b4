#include "lab/expr.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "core/error.h"

namespace moe {
namespace {

using Fn = double (*)(const std::vector<double>&);
struct Function {
  size_t arity;  // 0: one or more
  Fn fn;
};

const std::map<std::string, Function>& functions() {
  static const std::map<std::string, Function> f = {
      {"min", {0, [](const std::vector<double>& a) { return *std::min_element(a.begin(), a.end()); }}},
      {"max", {0, [](const std::vector<double>& a) { return *std::max_element(a.begin(), a.end()); }}},
      {"pow", {2, [](const std::vector<double>& a) { return std::pow(a[0], a[1]); }}},
      {"sqrt", {1, [](const std::vector<double>& a) { return std::sqrt(a[0]); }}},
      {"log", {1, [](const std::vector<double>& a) { return std::log(a[0]); }}},
      {"log2", {1, [](const std::vector<double>& a) { return std::log2(a[0]); }}},
      {"log10", {1, [](const std::vector<double>& a) { return std::log10(a[0]); }}},
      {"exp", {1, [](const std::vector<double>& a) { return std::exp(a[0]); }}},
      {"abs", {1, [](const std::vector<double>& a) { return std::fabs(a[0]); }}},
      {"floor", {1, [](const std::vector<double>& a) { return std::floor(a[0]); }}},
      {"ceil", {1, [](const std::vector<double>& a) { return std::ceil(a[0]); }}},
      {"round", {1, [](const std::vector<double>& a) { return std::round(a[0]); }}},
  };
  return f;
}

bool name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; }

// Recursive descent: sum := product (('+'|'-') product)*; product := power (('*'|'/'|'%') power)*;
// power := unary ('^' power)?; unary := '-' unary | '+' unary | atom; atom := number | name | call | '(' sum ')'.
class Parser {
 public:
  Parser(const std::string& text, const std::function<std::optional<double>(const std::string&)>& lookup)
      : s_(text), lookup_(lookup) {}
  double parse() {
    const double v = sum();
    skip();
    if (i_ < s_.size()) error("unexpected \"" + s_.substr(i_, 1) + "\"");
    return v;
  }

 private:
  const std::string& s_;
  const std::function<std::optional<double>(const std::string&)>& lookup_;
  size_t i_ = 0;

  [[noreturn]] void error(const std::string& what) const {
    fail("expression \"" + s_ + "\": " + what + " at character " + std::to_string(i_ + 1));
  }
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  double sum() {
    double v = product();
    for (;;) {
      if (eat('+')) v += product();
      else if (eat('-')) v -= product();
      else return v;
    }
  }
  double product() {
    double v = power();
    for (;;) {
      if (eat('*')) {
        v *= power();
      } else if (eat('/')) {
        const double d = power();
        if (d == 0.0) error("division by zero");
        v /= d;
      } else if (eat('%')) {
        const double d = power();
        if (d == 0.0) error("remainder by zero");
        v = std::fmod(v, d);
      } else {
        return v;
      }
    }
  }
  double power() {
    const double b = unary();
    return eat('^') ? std::pow(b, power()) : b;
  }
  double unary() {
    if (eat('-')) return -unary();
    if (eat('+')) return unary();
    return atom();
  }
  double atom() {
    skip();
    if (i_ >= s_.size()) error("the expression ends early");
    if (eat('(')) {
      const double v = sum();
      if (!eat(')')) error("missing \")\"");
      return v;
    }
    const char c = s_[i_];
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      const char* begin = s_.c_str() + i_;
      char* end = nullptr;
      const double v = std::strtod(begin, &end);
      if (end == begin) error("a number expected");
      i_ += static_cast<size_t>(end - begin);
      return v;
    }
    if (!name_start(c)) error("unexpected \"" + std::string(1, c) + "\"");
    const size_t start = i_;
    while (i_ < s_.size() && name_char(s_[i_])) ++i_;
    const std::string name = s_.substr(start, i_ - start);
    if (eat('(')) return call(name);
    const std::optional<double> v = lookup_(name);
    if (!v) {
      i_ = start;
      error("unknown name \"" + name + "\" (a config key such as model.hidden_size, or a sweep variable)");
    }
    return *v;
  }
  double call(const std::string& name) {
    const auto it = functions().find(name);
    if (it == functions().end()) error("unknown function \"" + name + "\" (min, max, pow, sqrt, log, log2, log10, exp, abs, floor, ceil, round)");
    std::vector<double> args;
    if (!eat(')')) {
      do args.push_back(sum());
      while (eat(','));
      if (!eat(')')) error("missing \")\" after the arguments of " + name);
    }
    if (args.empty() || (it->second.arity && args.size() != it->second.arity))
      error(name + " takes " + (it->second.arity ? std::to_string(it->second.arity) : std::string("one or more")) +
            " argument(s), not " + std::to_string(args.size()));
    return it->second.fn(args);
  }
};

}  // namespace

double eval_expr(const std::string& text, const std::function<std::optional<double>(const std::string&)>& lookup) {
  return Parser(text, lookup).parse();
}

std::vector<std::string> expr_names(const std::string& text) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size();) {
    if (std::isdigit(static_cast<unsigned char>(text[i])) || (text[i] == '.' && i + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1])))) {
      while (i < text.size() && (name_char(text[i]) || ((text[i] == '+' || text[i] == '-') && (text[i - 1] == 'e' || text[i - 1] == 'E'))))
        ++i;  // a number, exponent included
      continue;
    }
    if (!name_start(text[i])) {
      ++i;
      continue;
    }
    const size_t start = i;
    while (i < text.size() && name_char(text[i])) ++i;
    size_t j = i;
    while (j < text.size() && std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    const std::string name = text.substr(start, i - start);
    if ((j < text.size() && text[j] == '(') || std::find(out.begin(), out.end(), name) != out.end()) continue;
    out.push_back(name);
  }
  return out;
}

}  // namespace moe
