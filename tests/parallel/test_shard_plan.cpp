// SPDX-License-Identifier: MIT
// Tests of the shard partition and the shard runners: the partition depends only on (b, S), the
// combination order only on the shard index, and the error reported only on the failing shards.

#include <hypergrad/parallel/shard_plan.hpp>

#include <catch2/catch.hpp>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

using hypergrad::Index;
using hypergrad::InvalidArgument;
using hypergrad::ShardPlan;
using Catch::Matchers::Contains;

TEST_CASE("a batch of b items is cut into ceil(b/S) consecutive shards of S, the last taking the remainder",
          "[parallel]") {
  const ShardPlan plan(120, 50);
  CHECK(plan.numItems() == 120);
  CHECK(plan.shardSize() == 50);
  REQUIRE(plan.numShards() == 3);
  CHECK(plan.begin(0) == 0);
  CHECK(plan.begin(1) == 50);
  CHECK(plan.begin(2) == 100);
  CHECK(plan.size(0) == 50);
  CHECK(plan.size(1) == 50);
  CHECK(plan.size(2) == 20);

  const ShardPlan even(200, 50);
  REQUIRE(even.numShards() == 4);
  CHECK(even.size(3) == 50);

  const ShardPlan single(7, 50);
  REQUIRE(single.numShards() == 1);
  CHECK(single.size(0) == 7);

  CHECK(ShardPlan(0, 50).numShards() == 0);
}

TEST_CASE("the shards cover every item of the batch exactly once, in batch order", "[parallel]") {
  for (Index b = 0; b <= 40; ++b) {
    for (Index S = 1; S <= 45; ++S) {
      const ShardPlan plan(b, S);
      std::vector<Index> items;
      for (Index s = 0; s < plan.numShards(); ++s) {
        CHECK(plan.size(s) >= 1);
        CHECK(plan.size(s) <= S);
        for (Index k = 0; k < plan.size(s); ++k) items.push_back(plan.begin(s) + k);
      }
      std::vector<Index> expected;
      for (Index k = 0; k < b; ++k) expected.push_back(k);
      CHECK(items == expected);
    }
  }
}

TEST_CASE("a shard size below 1 or a negative batch is rejected, naming the value", "[parallel][errors]") {
  CHECK_THROWS_AS(ShardPlan(10, 0), InvalidArgument);
  CHECK_THROWS_WITH(ShardPlan(10, -3), Contains("ShardPlan") && Contains("shard size -3"));
  CHECK_THROWS_WITH(ShardPlan(-1, 5), Contains("ShardPlan") && Contains("-1 items"));
  CHECK_THROWS_WITH(hypergrad::detail::checkShardSize(0, "Caller::setShardSize"),
                    Contains("Caller::setShardSize") && Contains("shard size 0"));
  CHECK(hypergrad::detail::checkShardSize(1, "Caller::setShardSize") == 1);
}

TEST_CASE("shard results are combined in shard order 0, 1, 2, ... whatever the wave size", "[parallel]") {
  const Index numShards = 11;
  for (Index maxSlots : {Index(1), Index(3), Index(4), Index(11), Index(16)}) {
    std::vector<Index> slotOf(static_cast<std::size_t>(numShards), -1);
    std::vector<Index> order;
    hypergrad::detail::runShardWaves(
        numShards, maxSlots,
        [&](Index s, Index slot) { slotOf[static_cast<std::size_t>(s)] = slot; },
        [&](Index s, Index slot) {
          CHECK(slotOf[static_cast<std::size_t>(s)] == slot);
          CHECK(slot < maxSlots);
          order.push_back(s);
        });
    std::vector<Index> expected;
    for (Index s = 0; s < numShards; ++s) expected.push_back(s);
    CHECK(order == expected);
  }
}

TEST_CASE("when several shards throw, the lowest shard's exception is the one rethrown", "[parallel][errors]") {
  std::vector<int> ran(6, 0);
  CHECK_THROWS_WITH(hypergrad::detail::forEachShard(6,
                                                    [&](Index s) {
                                                      ran[static_cast<std::size_t>(s)] = 1;
                                                      if (s == 2 || s == 4)
                                                        throw std::runtime_error("shard " + std::to_string(s));
                                                    }),
                    "shard 2");
  // Every shard runs even when one fails: the error does not depend on the scheduling.
  CHECK(ran == std::vector<int>(6, 1));
}
