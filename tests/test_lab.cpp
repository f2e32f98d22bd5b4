// test_lab.cpp — the scaling-law lab (src/lab/): the derived-key expressions, the law fits against the
// papers' coefficients on synthetic points, reading results tables, and the sweep file's checks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "lab/expr.h"
#include "lab/laws.h"
#include "lab/sweep.h"

namespace fs = std::filesystem;
using namespace moe;

namespace {

std::optional<double> vars(const std::string& n) {
  if (n == "G") return 4.0;
  if (n == "model.hidden_size") return 128.0;
  return std::nullopt;
}

std::string temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("moe_test_lab_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// 1% multiplicative noise, deterministic.
double noisy(double loss, uint64_t i, uint64_t seed = 7) {
  return loss * (1.0 + 0.01 * static_cast<double>(rng_normal(seed, 3, i)));
}

}  // namespace

TEST(Expr, ArithmeticNamesAndFunctions) {
  EXPECT_DOUBLE_EQ(eval_expr("1024 / G", vars), 256.0);
  EXPECT_DOUBLE_EQ(eval_expr("4 * model.hidden_size + 1", vars), 513.0);
  EXPECT_DOUBLE_EQ(eval_expr("-(2 + 3) * 2 ^ 3 ^ 2 / 512", vars), -5.0);  // ^ is right-associative
  EXPECT_DOUBLE_EQ(eval_expr("min(2, G, 7) + max(1, 3) + round(2.6) + floor(-1.5) + sqrt(16) + log2(8)", vars), 2 + 3 + 3 - 2 + 4 + 3);
  EXPECT_DOUBLE_EQ(eval_expr("pow(2, 10) % 1000", vars), 24.0);
  EXPECT_DOUBLE_EQ(eval_expr("1.5e2", vars), 150.0);
  EXPECT_EQ(expr_names("min(2, model.num_local_experts) * G + 1e3 / G"), (std::vector<std::string>{"model.num_local_experts", "G"}));
}

TEST(Expr, ErrorsNameTheProblem) {
  EXPECT_NE(error_of([] { eval_expr("2 * H", vars); }).find("unknown name \"H\""), std::string::npos);
  EXPECT_NE(error_of([] { eval_expr("1 / (G - 4)", vars); }).find("division by zero"), std::string::npos);
  EXPECT_NE(error_of([] { eval_expr("(1 + 2", vars); }).find("missing \")\""), std::string::npos);
  EXPECT_NE(error_of([] { eval_expr("foo(1)", vars); }).find("unknown function \"foo\""), std::string::npos);
  EXPECT_NE(error_of([] { eval_expr("pow(1)", vars); }).find("takes 2 argument"), std::string::npos);
  EXPECT_NE(error_of([] { eval_expr("1 2", vars); }).find("unexpected"), std::string::npos);
}

// The fitter recovers each paper's coefficients from points its law generates, with 1% noise.
TEST(Laws, ClarkRecoversPublishedCoefficients) {
  for (const auto& [who, truth] : published_fits(Law::clark)) {
    std::vector<LawPoint> pts;
    uint64_t i = 0;
    for (double N : {1.5e7, 2.5e7, 5.5e7, 1.3e8, 3.7e8, 1.3e9})
      for (double E : {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}) {
        LawPoint p{N, E, 1, 0, 0};
        p.loss = noisy(law_loss(Law::clark, truth, p), i++);
        pts.push_back(p);
      }
    const LawFit f = fit_law(Law::clark, pts, 20);
    SCOPED_TRACE(who);
    EXPECT_NEAR(f.coef[0], truth[0], 0.1 * std::fabs(truth[0]));  // a: the exponent of N
    EXPECT_NEAR(f.coef[1], truth[1], 0.1 * std::fabs(truth[1]));  // b: the exponent of Ê
    EXPECT_NEAR(f.coef[3], truth[3], 0.05 * truth[3]);            // d
    EXPECT_LT(f.rmse, 0.02 * 3.0);
    for (size_t k = 0; k < f.coef.size(); ++k) EXPECT_LE(f.interval[k].first, f.interval[k].second);
    // N̄ of the dense model is N itself; experts make it larger.
    EXPECT_NEAR(clark_effective_params(f.coef, 1e8, 1) / 1e8, 1.0, 1e-9);
    EXPECT_GT(clark_effective_params(truth, 1e8, 64), 2e8);
  }
}

TEST(Laws, KrajewskiRecoversPublishedCoefficients) {
  const std::vector<double> truth = published_fits(Law::krajewski)[0].second;
  for (uint64_t seed : {7, 8, 9}) {  // three draws of the noise
    std::vector<LawPoint> pts;
    uint64_t i = 0;
    // The law's terms are small against c and its exponents small: the points span five decades of N
    // and of D so that 1% noise leaves each term visible.
    for (double N : {1e6, 1e7, 1e8, 1e9, 1e10, 1e11})
      for (double D : {1e8, 1e9, 1e10, 1e11, 1e12, 1e13})
        for (double G : {1, 2, 4, 8, 16, 32, 64}) {
          LawPoint p{N, 64, G, D, 0};
          p.loss = noisy(law_loss(Law::krajewski, truth, p), i++, seed);
          pts.push_back(p);
        }
    const LawFit f = fit_law(Law::krajewski, pts, 10);
    SCOPED_TRACE("noise seed " + std::to_string(seed));
    EXPECT_NEAR(f.coef[1], truth[1], 0.1 * truth[1]);  // alpha
    EXPECT_NEAR(f.coef[3], truth[3], 0.1 * truth[3]);  // beta
    EXPECT_NEAR(f.coef[5], truth[5], 0.1 * truth[5]);  // gamma
    EXPECT_LT(f.rmse, 0.05);
    EXPECT_EQ(f.points, pts.size());
  }
}

TEST(Laws, TooFewPointsOrOneSizeIsAnError) {
  std::vector<LawPoint> pts(5, LawPoint{1e6, 2, 1, 1e6, 3.0});
  EXPECT_NE(error_of([&] { fit_law(Law::krajewski, pts); }).find("needs at least 8 points; the table has 5"), std::string::npos);
  std::vector<LawPoint> one_size;
  for (double E : {1, 2, 4, 8, 16, 32, 64, 128}) one_size.push_back({1e6, E, 1, 1e6, 4.0 - 0.1 * std::log2(E)});
  EXPECT_NE(error_of([&] { fit_law(Law::clark, one_size); }).find("needs points at several model sizes N"), std::string::npos);
}

TEST(Laws, ReadsResultsTablesAndNamesBadCells) {
  const std::string d = temp_dir("tables");
  write(d + "/ok.csv", "name,active_params,experts,val_loss,tokens,granularity,non_embedding_params\n"
                       "a,1000,1,4.5,100,1,500\n\"b,2\",2000,8,4.25,100,2,900\n");
  const std::vector<LawPoint> c = read_law_points(d + "/ok.csv", Law::clark);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[1].N, 2000);
  EXPECT_EQ(c[1].E, 8);
  EXPECT_EQ(c[1].loss, 4.25);
  const std::vector<LawPoint> k = read_law_points(d + "/ok.csv", Law::krajewski);
  EXPECT_EQ(k[1].N, 900);
  EXPECT_EQ(k[1].G, 2);
  EXPECT_EQ(k[1].D, 100);
  write(d + "/ok.jsonl", "{\"active_params\": 1000, \"experts\": 1, \"val_loss\": 4.5}\n");
  EXPECT_EQ(read_law_points(d + "/ok.jsonl", Law::clark).size(), 1u);

  write(d + "/missing.csv", "active_params,val_loss\n1,2\n");
  EXPECT_NE(error_of([&] { read_law_points(d + "/missing.csv", Law::clark); }).find("column \"experts\" is missing"), std::string::npos);
  write(d + "/bad.csv", "active_params,experts,val_loss\n1,2,3\n1,2,abc\n");
  EXPECT_NE(error_of([&] { read_law_points(d + "/bad.csv", Law::clark); }).find("line 3: column val_loss holds \"abc\""), std::string::npos);
  EXPECT_NE(error_of([&] { read_law_points(d + "/none.csv", Law::clark); }).find("cannot read"), std::string::npos);
  fs::remove_all(d);
}

TEST(Sweep, ExpandsTheGridAndDerivesKeys) {
  const std::string d = temp_dir("grid");
  write(d + "/s.toml", R"(
[set]
"train.steps" = 7
[grid]
G = [1, 2]
model.num_local_experts = [4, 8]
[[point]]
G = 4
"model.num_local_experts" = 2
[derive]
"model.granularity" = "G"
"model.moe_intermediate_size" = "256 * model.granularity / G"
)");
  const Sweep s = load_sweep(d + "/s.toml", d + "/out");
  ASSERT_EQ(s.points.size(), 5u);
  EXPECT_EQ(s.points[0].name, "p00_G-1_num_local_experts-4");
  EXPECT_EQ(s.points[3].cfg.model.moe.num_local_experts, 8);
  EXPECT_EQ(s.points[3].cfg.model.moe.granularity, 2);
  EXPECT_EQ(s.points[4].cfg.model.moe.granularity, 4);
  EXPECT_EQ(s.points[4].cfg.model.moe.moe_intermediate_size, 256);
  EXPECT_EQ(s.points[4].cfg.train.steps, 7);
  EXPECT_EQ(s.points[4].cfg.train.out, d + "/out/points/" + s.points[4].name);
  fs::remove_all(d);
}

TEST(Sweep, BadFilesAreOneLineErrors) {
  const std::string d = temp_dir("bad");
  auto err = [&](const std::string& text) {
    write(d + "/s.toml", text);
    return error_of([&] { load_sweep(d + "/s.toml", d + "/out"); });
  };
  EXPECT_NE(err("[grid]\n\"model.num_local_expert\" = [1, 2]\n").find("did you mean model.num_local_experts"), std::string::npos);
  EXPECT_NE(err("[grid]\n\"model.num_local_experts\" = []\n").find("the grid is empty"), std::string::npos);
  EXPECT_NE(err("[set]\n\"train.steps\" = 5\n").find("the grid is empty"), std::string::npos);
  EXPECT_NE(err("[grid]\nexperts = [1, 2]\n").find("no [derive] expression uses it"), std::string::npos);
  EXPECT_NE(err("[grid]\nG = [1]\n[derive]\n\"model.granularity\" = \"G * H\"\n").find("unknown name \"H\""), std::string::npos);
  EXPECT_NE(err("[grid]\nG = [3]\n[derive]\n\"model.moe_intermediate_size\" = \"256 / G\"\n").find("85.3333"), std::string::npos);
  EXPECT_NE(err("[grid]\n\"model.hidden_size\" = [100]\n").find("point p00_hidden_size-100"), std::string::npos);
  EXPECT_NE(err("grid = 3\n").find("grid must be a table"), std::string::npos);
  EXPECT_NE(err("[grids]\n").find("unknown top-level key \"grids\""), std::string::npos);
  EXPECT_NE(err("[grid]\n\"train.out\" = [\"x\"]\n").find("train.out"), std::string::npos);
  EXPECT_FALSE(fs::exists(d + "/out"));  // nothing written
  fs::remove_all(d);
}
