#include "data/chat_template.h"

#include <algorithm>
#include <cctype>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"

namespace moe {

namespace {

using Value = ChatValue;
using List = ChatValue::List;
using Dict = ChatValue::Dict;

[[noreturn]] void bad(const std::string& what, size_t at) {
  fail("chat template: " + what + " (at offset " + std::to_string(at) + "); moe.cpp renders a subset of Jinja (docs/INTEROP.md)");
}

Value none() { return {std::monostate{}}; }
Value boolean(bool b) { return {b}; }
Value integer(long long i) { return {i}; }
Value str(std::string s) { return {std::move(s)}; }
bool is_undef(const Value& v) { return std::holds_alternative<ChatValue::Undefined>(v.v); }
bool is_none(const Value& v) { return std::holds_alternative<std::monostate>(v.v); }
const std::string* as_str(const Value& v) { return std::get_if<std::string>(&v.v); }
const long long* as_int(const Value& v) { return std::get_if<long long>(&v.v); }

bool truthy(const Value& v) {
  if (auto b = std::get_if<bool>(&v.v)) return *b;
  if (auto i = as_int(v)) return *i != 0;
  if (auto s = as_str(v)) return !s->empty();
  if (auto l = std::get_if<std::shared_ptr<List>>(&v.v)) return !(*l)->empty();
  if (auto d = std::get_if<std::shared_ptr<Dict>>(&v.v)) return !(*d)->empty();
  return false;  // undefined, none
}

std::string to_text(const Value& v) {
  if (is_undef(v)) return "";
  if (is_none(v)) return "None";
  if (auto b = std::get_if<bool>(&v.v)) return *b ? "True" : "False";
  if (auto i = as_int(v)) return std::to_string(*i);
  if (auto s = as_str(v)) return *s;
  fail("chat template: a list or dict is printed; moe.cpp prints strings, numbers and booleans");
}

bool equal(const Value& a, const Value& b) {
  if (is_undef(a) || is_undef(b)) return is_undef(a) && is_undef(b);
  if (is_none(a) || is_none(b)) return is_none(a) && is_none(b);
  auto num = [](const Value& v, long long& out) {
    if (auto i = as_int(v)) return out = *i, true;
    if (auto flag = std::get_if<bool>(&v.v)) return out = *flag, true;
    return false;
  };
  long long x, y;
  if (num(a, x) && num(b, y)) return x == y;
  if (as_str(a) && as_str(b)) return *as_str(a) == *as_str(b);
  return false;
}

// ---- expressions ----

struct Tok {
  enum Kind { name, string, number, op, end } kind;
  std::string text;
  size_t at;
};

std::vector<Tok> lex(const std::string& s, size_t base) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) { ++i; continue; }
    const size_t at = base + i;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::name, s.substr(i, j - i), at});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      out.push_back({Tok::number, s.substr(i, j - i), at});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          v += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          v += s[j];
        }
      }
      if (j >= s.size()) bad("an unterminated string", at);
      out.push_back({Tok::string, v, at});
      i = j + 1;
    } else {
      static const char* ops[] = {"==", "!=", "<=", ">=", "//", "<", ">", "+", "-", "*", "/", "%", "~", "(", ")", "[", "]",
                                  ",", ".", "|", "="};
      bool hit = false;
      for (const char* o : ops)
        if (s.compare(i, std::string(o).size(), o) == 0) {
          out.push_back({Tok::op, o, at});
          i += std::string(o).size();
          hit = true;
          break;
        }
      if (!hit) bad(std::string("the character '") + c + "'", at);
    }
  }
  out.push_back({Tok::end, "", base + s.size()});
  return out;
}

struct Scope {
  std::vector<std::map<std::string, Value>> frames;
  Value get(const std::string& n) const {
    for (auto it = frames.rbegin(); it != frames.rend(); ++it)
      if (auto f = it->find(n); f != it->end()) return f->second;
    return {};
  }
};

// A recursive-descent evaluator over the tokens of one expression (evaluated as it is parsed: the
// templates' expressions are small and every branch is cheap).
struct Expr {
  const std::vector<Tok>& t;
  Scope& scope;
  size_t p = 0;
  int skip = 0;  // > 0: only finding where an expression ends (a branch not taken): nothing fails

  // A value that cannot be computed: an error, or undefined while skipping.
  Value oops(const std::string& what, size_t at) const {
    if (skip) return {};
    bad(what, at);
  }

  const Tok& peek() const { return t[p]; }
  bool is(const char* s) const { return (t[p].kind == Tok::op || t[p].kind == Tok::name) && t[p].text == s; }
  bool accept(const char* s) {
    if (!is(s)) return false;
    ++p;
    return true;
  }
  void expect(const char* s) {
    if (!accept(s)) bad(std::string("expected '") + s + "' but found '" + t[p].text + "'", t[p].at);
  }

  Value parse() {
    Value v = cond_();
    if (t[p].kind != Tok::end) bad("unexpected '" + t[p].text + "'", t[p].at);
    return v;
  }
  // expr1 if cond [else expr2]: the branch not taken is only parsed.
  Value cond_() {
    const size_t start = p;
    ++skip;
    or_();
    --skip;
    if (!is("if")) {
      p = start;
      return or_();
    }
    ++p;
    const bool c = truthy(or_());
    const size_t after = p;
    if (c) {
      p = start;
      Value v = or_();
      p = after;
      if (accept("else")) {
        ++skip;
        cond_();
        --skip;
      }
      return v;
    }
    return accept("else") ? cond_() : Value{};
  }
  Value or_() {
    Value a = and_();
    while (accept("or")) {
      Value b = and_();
      a = boolean(truthy(a) || truthy(b));
    }
    return a;
  }
  Value and_() {
    Value a = not_();
    while (accept("and")) {
      Value b = not_();
      a = boolean(truthy(a) && truthy(b));
    }
    return a;
  }
  Value not_() {
    if (accept("not")) return boolean(!truthy(not_()));
    return compare();
  }
  Value compare() {
    Value a = add();
    for (;;) {
      if (accept("==")) a = boolean(equal(a, add()));
      else if (accept("!=")) a = boolean(!equal(a, add()));
      else if (is("<") || is(">") || is("<=") || is(">=")) {
        const std::string op = t[p++].text;
        const Value b = add();
        const long long *x = as_int(a), *y = as_int(b);
        if (!x || !y) {
          a = oops("'" + op + "' between values that are not integers", t[p - 1].at);
          continue;
        }
        a = boolean(op == "<" ? *x < *y : op == ">" ? *x > *y : op == "<=" ? *x <= *y : *x >= *y);
      } else if (is("in") || (is("not") && p + 1 < t.size() && t[p + 1].text == "in")) {
        const bool negate = accept("not");
        expect("in");
        a = boolean(contains(add(), a) != negate);
      } else {
        return a;
      }
    }
  }
  static bool contains(const Value& hay, const Value& needle) {
    if (auto s = as_str(hay)) return as_str(needle) && s->find(*as_str(needle)) != std::string::npos;
    if (auto l = std::get_if<std::shared_ptr<List>>(&hay.v)) {
      for (const Value& x : **l)
        if (equal(x, needle)) return true;
      return false;
    }
    if (auto d = std::get_if<std::shared_ptr<Dict>>(&hay.v)) return as_str(needle) && (*d)->count(*as_str(needle));
    return false;
  }
  Value add() {
    Value a = concat();
    for (;;) {
      if (accept("+")) {
        const Value b = concat();
        if (as_str(a) && as_str(b)) a = str(*as_str(a) + *as_str(b));
        else if (as_int(a) && as_int(b)) a = integer(*as_int(a) + *as_int(b));
        else a = oops("'+' between a string and something else", t[p - 1].at);
      } else if (accept("-")) {
        const Value b = concat();
        a = as_int(a) && as_int(b) ? integer(*as_int(a) - *as_int(b)) : oops("'-' between values that are not integers", t[p - 1].at);
      } else {
        return a;
      }
    }
  }
  Value concat() {
    Value a = mul();
    while (accept("~")) {
      const Value b = mul();
      a = skip ? Value{} : str(to_text(a) + to_text(b));
    }
    return a;
  }
  Value mul() {
    Value a = unary();
    while (is("*") || is("%") || is("//")) {
      const std::string op = t[p++].text;
      const Value b = unary();
      if (!as_int(a) || !as_int(b) || (op != "*" && *as_int(b) == 0)) {
        a = oops("'" + op + "' needs integers (and no zero divisor)", t[p - 1].at);
        continue;
      }
      const long long x = *as_int(a), y = *as_int(b);
      a = integer(op == "*" ? x * y : op == "%" ? ((x % y) + y) % y : x / y);
    }
    return a;
  }
  Value unary() {
    if (accept("-")) {
      const Value v = unary();
      return as_int(v) ? integer(-*as_int(v)) : oops("'-' before something that is not an integer", t[p - 1].at);
    }
    return postfix(primary());
  }
  Value primary() {
    const Tok& k = t[p];
    if (k.kind == Tok::string) {
      ++p;
      std::string s = k.text;
      while (t[p].kind == Tok::string) s += t[p++].text;  // adjacent literals concatenate
      return str(s);
    }
    if (k.kind == Tok::number) return ++p, integer(std::stoll(k.text));
    if (accept("(")) {
      Value v = cond_();
      expect(")");
      return v;
    }
    if (accept("[")) {
      auto l = std::make_shared<List>();
      if (!accept("]")) {
        do l->push_back(cond_());
        while (accept(","));
        expect("]");
      }
      return {l};
    }
    if (k.kind == Tok::name) {
      ++p;
      if (k.text == "true" || k.text == "True") return boolean(true);
      if (k.text == "false" || k.text == "False") return boolean(false);
      if (k.text == "none" || k.text == "None") return none();
      if (k.text == "raise_exception") {
        expect("(");
        const Value msg = cond_();
        expect(")");
        if (skip) return {};
        fail("chat template: " + to_text(msg));
      }
      return scope.get(k.text);
    }
    bad("unexpected '" + k.text + "'", k.at);
  }
  Value item(const Value& v, const Value& key, size_t at) {
    if (skip) return {};
    if (auto d = std::get_if<std::shared_ptr<Dict>>(&v.v)) {
      if (!as_str(key)) bad("a dict indexed by something other than a string", at);
      auto it = (*d)->find(*as_str(key));
      return it == (*d)->end() ? Value{} : it->second;
    }
    if (auto l = std::get_if<std::shared_ptr<List>>(&v.v)) {
      if (!as_int(key)) bad("a list indexed by something other than an integer", at);
      long long i = *as_int(key);
      const long long n = static_cast<long long>((*l)->size());
      if (i < 0) i += n;
      return i < 0 || i >= n ? Value{} : (**l)[static_cast<size_t>(i)];
    }
    if (is_undef(v)) bad("a key of an undefined value", at);
    bad("indexing a value that is neither a list nor a dict", at);
  }
  Value method(const Value& v, const std::string& name, size_t at) {
    std::vector<Value> args;
    if (!accept(")")) {
      do args.push_back(cond_());
      while (accept(","));
      expect(")");
    }
    const std::string* s = as_str(v);
    if (!s) return oops("the method " + name + "() of a value that is not a string", at);
    auto ws = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
    std::string r = *s;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      if (name != "rstrip") r.erase(r.begin(), std::find_if_not(r.begin(), r.end(), ws));
      if (name != "lstrip") r.erase(std::find_if_not(r.rbegin(), r.rend(), ws).base(), r.end());
      return str(r);
    }
    if (name == "upper" || name == "lower") {
      for (char& c : r) c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return str(r);
    }
    if ((name == "startswith" || name == "endswith") && args.size() == 1 && as_str(args[0])) {
      const std::string& x = *as_str(args[0]);
      const bool ok = x.size() <= r.size() && (name == "startswith" ? r.compare(0, x.size(), x) == 0
                                                                     : r.compare(r.size() - x.size(), x.size(), x) == 0);
      return boolean(ok);
    }
    bad("the string method " + name + "()", at);
  }
  Value postfix(Value v) {
    for (;;) {
      const size_t at = t[p].at;
      if (accept(".")) {
        if (t[p].kind != Tok::name) bad("a name after '.'", at);
        const std::string name = t[p++].text;
        if (accept("(")) v = method(v, name, at);
        else v = item(v, str(name), at);
      } else if (accept("[")) {
        const Value key = cond_();
        expect("]");
        v = item(v, key, at);
      } else if (accept("|")) {
        if (t[p].kind != Tok::name) bad("a filter name after '|'", at);
        const std::string f = t[p++].text;
        if (skip) {
          v = {};
          if (f != "trim" && f != "length" && f != "upper" && f != "lower") bad("the filter '" + f + "'", at);
        } else if (f == "trim") v = str([&] {
            std::string s = to_text(v);
            auto ws = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
            s.erase(s.begin(), std::find_if_not(s.begin(), s.end(), ws));
            s.erase(std::find_if_not(s.rbegin(), s.rend(), ws).base(), s.end());
            return s;
          }());
        else if (f == "length") {
          if (auto s = as_str(v)) v = integer(static_cast<long long>(s->size()));
          else if (auto l = std::get_if<std::shared_ptr<List>>(&v.v)) v = integer(static_cast<long long>((*l)->size()));
          else if (auto d = std::get_if<std::shared_ptr<Dict>>(&v.v)) v = integer(static_cast<long long>((*d)->size()));
          else v = oops("length of a value that has none", at);
        } else if (f == "upper" || f == "lower") {
          std::string s = to_text(v);
          for (char& c : s) c = static_cast<char>(f == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
          v = str(s);
        } else {
          bad("the filter '" + f + "'", at);
        }
      } else if (accept("is")) {
        const bool negate = accept("not");
        if (t[p].kind != Tok::name) bad("a test name after 'is'", at);
        const std::string test = t[p++].text;
        bool r;
        if (test == "defined") r = !is_undef(v);
        else if (test == "undefined") r = is_undef(v);
        else if (test == "none") r = is_none(v);
        else if (test == "string") r = as_str(v) != nullptr;
        else bad("the test 'is " + test + "'", at);
        v = boolean(r != negate);
      } else {
        return v;
      }
    }
  }
};

Value eval(const std::string& src, size_t at, Scope& scope) {
  const std::vector<Tok> toks = lex(src, at);
  Expr e{toks, scope};
  return e.parse();
}

// ---- statements ----

struct Tag {
  enum Kind { text, expr, stmt } kind;
  std::string body;  // text, or the tag's inside (without the '-' markers)
  size_t at;
};

// The template split into text and tags, with Jinja's whitespace rules applied as transformers sets
// them (trim_blocks, lstrip_blocks) and the '-' markers.
std::vector<Tag> split(const std::string& s) {
  std::vector<Tag> out;
  size_t i = 0;
  bool line_starting = true;  // the text now being read begins a line (Jinja's lexer keeps the same flag)
  std::string text;
  size_t text_at = 0;
  while (i < s.size()) {
    const bool open = s[i] == '{' && i + 1 < s.size() && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#');
    if (!open) {
      if (text.empty()) text_at = i;
      text += s[i++];
      continue;
    }
    const char k = s[i + 1];
    const std::string close = k == '{' ? "}}" : k == '%' ? "%}" : "#}";
    const size_t start = i;
    const size_t j = s.find(close, i + 2);
    if (j == std::string::npos) bad("a tag that is never closed", i);
    std::string inner = s.substr(i + 2, j - i - 2);
    const bool minus_before = !inner.empty() && inner[0] == '-';
    const bool minus_after = !inner.empty() && inner.back() == '-';
    if (minus_before) inner.erase(0, 1);
    if (minus_after && !inner.empty()) inner.pop_back();
    const bool block = k != '{';
    if (minus_before) {  // all whitespace before the tag
      while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    } else if (block) {  // lstrip_blocks: spaces and tabs alone on the tag's line, before it
      const size_t nl = text.rfind('\n');
      const size_t from = nl == std::string::npos ? 0 : nl + 1;
      if ((nl != std::string::npos || line_starting) && text.find_first_not_of(" \t", from) == std::string::npos)
        text.resize(from);
    }
    if (!text.empty()) out.push_back({Tag::text, text, text_at});
    text.clear();
    if (k == '{') out.push_back({Tag::expr, inner, start});
    else if (k == '%') out.push_back({Tag::stmt, inner, start});
    i = j + 2;
    line_starting = false;
    if (minus_after) {  // all whitespace after the tag
      while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) line_starting = s[i++] == '\n';
    } else if (block && i < s.size() && s[i] == '\n') {  // trim_blocks: the newline after a block tag
      ++i;
      line_starting = true;
    }
  }
  if (!text.empty()) out.push_back({Tag::text, text, text_at});
  return out;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string first_word(const std::string& s) {
  const std::string t = trim(s);
  size_t e = 0;
  while (e < t.size() && (std::isalnum(static_cast<unsigned char>(t[e])) || t[e] == '_')) ++e;
  return t.substr(0, e);
}

struct Renderer {
  const std::vector<Tag>& tags;
  Scope scope;
  std::string out;

  // Renders tags [i, ...) until a statement whose first word is in `stops` (returned), or the end.
  std::string block(size_t& i, const std::vector<std::string>& stops, bool emit) {
    while (i < tags.size()) {
      const Tag& g = tags[i];
      if (g.kind == Tag::text) {
        if (emit) out += g.body;
        ++i;
        continue;
      }
      if (g.kind == Tag::expr) {
        if (emit) out += to_text(eval(g.body, g.at, scope));
        ++i;
        continue;
      }
      const std::string w = first_word(g.body);
      if (std::find(stops.begin(), stops.end(), w) != stops.end()) return w;
      if (w == "if") if_(i, emit);
      else if (w == "for") for_(i, emit);
      else if (w == "set") {
        const std::string body = trim(g.body).substr(3);
        const size_t eq = body.find('=');
        if (eq == std::string::npos || body.compare(eq, 2, "==") == 0) bad("a set without '='", g.at);
        const std::string name = trim(body.substr(0, eq));
        if (name.empty() || name.find_first_of(" .[") != std::string::npos) bad("a set of something other than a name", g.at);
        if (emit) scope.frames.back()[name] = eval(body.substr(eq + 1), g.at, scope);
        ++i;
      } else {
        bad("the statement '" + (w.empty() ? trim(g.body) : w) + "'", g.at);
      }
    }
    if (!stops.empty()) bad("a block that is never closed (expected " + stops.back() + ")", tags.empty() ? 0 : tags.back().at);
    return "";
  }

  void if_(size_t& i, bool emit) {
    bool taken = false;
    std::string cond = trim(tags[i].body).substr(2);
    size_t at = tags[i].at;
    ++i;
    for (;;) {
      const bool run = emit && !taken && truthy(eval(cond, at, scope));
      const std::string w = block(i, {"elif", "else", "endif"}, run);
      taken = taken || run;
      if (w == "endif") return ++i, void();
      if (w == "elif") {
        cond = trim(tags[i].body).substr(4);
        at = tags[i].at;
        ++i;
        if (!emit) cond = "false";
        continue;
      }
      ++i;  // else
      block(i, {"endif"}, emit && !taken);
      ++i;
      return;
    }
  }

  void for_(size_t& i, bool emit) {
    const std::string head = trim(tags[i].body).substr(3);
    const size_t at = tags[i].at;
    const size_t in = head.find(" in ");
    if (in == std::string::npos) bad("a for without ' in '", at);
    const std::string var = trim(head.substr(0, in));
    if (var.empty() || var.find_first_of(",() ") != std::string::npos) bad("a for over more than one name", at);
    const size_t body = ++i;
    std::vector<Value> items;
    if (emit) {
      const Value seq = eval(head.substr(in + 4), at, scope);
      if (auto l = std::get_if<std::shared_ptr<List>>(&seq.v)) items = **l;
      else if (auto d = std::get_if<std::shared_ptr<Dict>>(&seq.v)) for (const auto& [k, v] : **d) items.push_back(str(k));
      else if (auto s = as_str(seq)) for (char c : *s) items.push_back(str(std::string(1, c)));
      else if (!is_undef(seq) && !is_none(seq)) bad("a for over something that is not a list", at);
    }
    const long long n = static_cast<long long>(items.size());
    for (long long k = 0; k < n; ++k) {
      auto loop = std::make_shared<Dict>();
      (*loop)["index0"] = integer(k);
      (*loop)["index"] = integer(k + 1);
      (*loop)["first"] = boolean(k == 0);
      (*loop)["last"] = boolean(k + 1 == n);
      (*loop)["length"] = integer(n);
      scope.frames.push_back({{var, items[static_cast<size_t>(k)]}, {"loop", Value{loop}}});
      i = body;
      block(i, {"endfor"}, true);
      scope.frames.pop_back();
    }
    if (n == 0) {  // walk the body without output to find its end
      i = body;
      block(i, {"endfor"}, false);
    }
    ++i;
  }
};

}  // namespace

std::optional<ChatFormat> read_chat_format(const std::string& dir) {
  const std::string path = dir + "/hf/tokenizer_config.json";
  if (!std::filesystem::exists(path)) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(read_file(path, ""), nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(path + " is not valid JSON; the file is damaged");
  if (!j.contains("chat_template")) return std::nullopt;
  ChatFormat f;
  const nlohmann::json& t = j["chat_template"];
  if (t.is_string()) {
    f.tmpl = t.get<std::string>();
  } else if (t.is_array()) {  // named templates: the "default" one
    for (const nlohmann::json& e : t)
      if (e.is_object() && e.value("name", std::string()) == "default") f.tmpl = e.value("template", std::string());
    if (f.tmpl.empty()) fail(path + ": chat_template lists named templates but none called \"default\"");
  } else {
    fail(path + ": chat_template must be a string");
  }
  auto token = [&](const char* key) {
    if (!j.contains(key) || j[key].is_null()) return std::string();
    if (j[key].is_string()) return j[key].get<std::string>();
    if (j[key].is_object() && j[key].contains("content")) return j[key]["content"].get<std::string>();
    fail(path + ": " + key + " must be a string or an object with \"content\"");
  };
  f.bos_token = token("bos_token");
  f.eos_token = token("eos_token");
  return f;
}

std::vector<int32_t> encode_chat(const TextTokenizer& tok, const std::string& text, const ChatFormat& f) {
  // The special tokens the template writes as text: their own ids, never split into pieces.
  std::vector<std::pair<std::string, int32_t>> specials;
  for (const std::string& s : {f.bos_token, f.eos_token})
    if (!s.empty())
      if (const int32_t id = tok.id_of(s); id >= 0) specials.emplace_back(s, id);
  std::vector<int32_t> out;
  size_t start = 0;
  auto plain = [&](size_t end) {
    if (end > start) {
      const std::vector<int32_t> ids = tok.encode(text.substr(start, end - start));
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  for (size_t i = 0; i < text.size();) {
    bool hit = false;
    for (const auto& [s, id] : specials)
      if (text.compare(i, s.size(), s) == 0) {
        plain(i);
        out.push_back(id);
        i += s.size();
        start = i;
        hit = true;
        break;
      }
    if (!hit) ++i;
  }
  plain(text.size());
  return out;
}

std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token) {
  const std::vector<Tag> tags = split(tmpl);
  Renderer r{tags, {}, {}};
  auto list = std::make_shared<List>();
  for (const ChatMessage& m : messages) {
    auto d = std::make_shared<Dict>();
    (*d)["role"] = str(m.role);
    (*d)["content"] = str(m.content);
    list->push_back({d});
  }
  r.scope.frames.push_back({{"messages", Value{list}},
                            {"add_generation_prompt", boolean(add_generation_prompt)},
                            {"bos_token", str(bos_token)},
                            {"eos_token", str(eos_token)}});
  size_t i = 0;
  r.block(i, {}, true);
  return r.out;
}

}  // namespace moe
