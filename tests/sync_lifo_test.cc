// tests/sync_lifo_test.cc — pm_lifo (sync/lifo.h): order, chains, nodes overlaid on raw
// memory blocks, and under contention: every node pushed is popped exactly once, with
// many producers and many consumers, including nodes recycled while pushes are in flight
// (the ABA pattern that breaks single-node pops).
#include <gtest/gtest.h>

#include <stddef.h>
#include <string.h>

#include <vector>

#include "sync/sync.h"
#include "tests/sync_test_util.h"

namespace {

using sync_test::RunThreads;

struct Item {
    pm_lifo_node node;  // first member: a pm_lifo_node * converts back to Item *
    int id;
    int payload;
};

Item *AsItem(pm_lifo_node *n) { return reinterpret_cast<Item *>(n); }

std::vector<int> Drain(pm_lifo *lifo) {
    std::vector<int> ids;
    for (pm_lifo_node *n = pm_lifo_pop_all(lifo); n != nullptr; n = pm_lifo_node_next(n)) ids.push_back(AsItem(n)->id);
    return ids;
}

TEST(SyncLifo, EmptyPopsNothing) {
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    EXPECT_TRUE(pm_lifo_is_empty(&lifo));
    EXPECT_EQ(pm_lifo_pop_all(&lifo), nullptr);
    pm_lifo other;
    pm_lifo_init(&other);
    EXPECT_TRUE(pm_lifo_is_empty(&other));
    EXPECT_EQ(pm_lifo_pop_all(&other), nullptr);
}

TEST(SyncLifo, PopAllReturnsNewestFirstAndEmpties) {
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    Item items[3] = {{{nullptr}, 0, 0}, {{nullptr}, 1, 0}, {{nullptr}, 2, 0}};
    for (Item &it : items) pm_lifo_push(&lifo, &it.node);
    EXPECT_FALSE(pm_lifo_is_empty(&lifo));
    EXPECT_EQ(Drain(&lifo), (std::vector<int>{2, 1, 0}));
    EXPECT_TRUE(pm_lifo_is_empty(&lifo));
    EXPECT_EQ(pm_lifo_pop_all(&lifo), nullptr);
}

TEST(SyncLifo, PushChainGoesOnTopInChainOrder) {
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    Item items[5] = {{{nullptr}, 0, 0}, {{nullptr}, 1, 0}, {{nullptr}, 2, 0}, {{nullptr}, 3, 0}, {{nullptr}, 4, 0}};
    pm_lifo_push(&lifo, &items[0].node);
    pm_lifo_push(&lifo, &items[1].node);
    // Private chain 2 -> 3 -> 4; last->next is garbage on purpose: push_chain overwrites it.
    items[2].node.next = &items[3].node;
    items[3].node.next = &items[4].node;
    items[4].node.next = reinterpret_cast<pm_lifo_node *>(&items[4]);
    pm_lifo_push_chain(&lifo, &items[2].node, &items[4].node);
    EXPECT_EQ(Drain(&lifo), (std::vector<int>{2, 3, 4, 1, 0}));
}

TEST(SyncLifo, SingleNodeChainIsAPush) {
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    Item a{{nullptr}, 7, 0};
    pm_lifo_push_chain(&lifo, &a.node, &a.node);
    EXPECT_EQ(Drain(&lifo), (std::vector<int>{7}));
}

// The intended use: the first word of a free block is the node.
TEST(SyncLifo, NodeCanBeTheFirstWordOfARawBlock) {
    alignas(16) unsigned char blocks[4][32];
    memset(blocks, 0xAB, sizeof blocks);
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    for (auto &b : blocks) pm_lifo_push(&lifo, reinterpret_cast<pm_lifo_node *>(b));
    int n = 0;
    for (pm_lifo_node *node = pm_lifo_pop_all(&lifo); node; node = pm_lifo_node_next(node)) {
        EXPECT_EQ(reinterpret_cast<unsigned char *>(node), blocks[3 - n]);
        // Only the first word was used: the rest of the block is untouched.
        EXPECT_EQ(blocks[3 - n][sizeof(void *)], 0xAB);
        n++;
    }
    EXPECT_EQ(n, 4);
}

// Many producers (single pushes and chains), many consumers; each node exactly once,
// with the payload the producer wrote before pushing.
TEST(SyncLifoContended, ManyProducersManyConsumersExactlyOnce) {
    constexpr int kProducers = 3;
    constexpr int kConsumers = 2;
    constexpr int kPerProducer = 3000;
    constexpr int kTotal = kProducers * kPerProducer;
    std::vector<Item> items(kTotal);
    std::vector<std::vector<int>> seen_by(kConsumers);
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    size_t consumed = 0;

    RunThreads(kProducers + kConsumers, [&](int t) {
        if (t < kProducers) {
            Item *mine = &items[t * kPerProducer];
            int i = 0;
            while (i < kPerProducer) {
                // Alternate single pushes and chains of 1..4 nodes.
                int len = (i / 7) % 2 == 0 ? 1 : 1 + i % 4;
                if (i + len > kPerProducer) len = kPerProducer - i;
                for (int k = 0; k < len; k++) {
                    mine[i + k].id = t * kPerProducer + i + k;
                    mine[i + k].payload = ~mine[i + k].id;
                    if (k + 1 < len) mine[i + k].node.next = &mine[i + k + 1].node;
                }
                if (len == 1) {
                    pm_lifo_push(&lifo, &mine[i].node);
                } else {
                    pm_lifo_push_chain(&lifo, &mine[i].node, &mine[i + len - 1].node);
                }
                i += len;
            }
            return;
        }
        std::vector<int> &seen = seen_by[t - kProducers];
        unsigned spins = 0;
        while (pm_atomic_load_size_relaxed(&consumed) < static_cast<size_t>(kTotal)) {
            size_t got = 0;
            for (pm_lifo_node *n = pm_lifo_pop_all(&lifo); n != nullptr; n = pm_lifo_node_next(n)) {
                Item *it = AsItem(n);
                EXPECT_EQ(it->payload, ~it->id);
                seen.push_back(it->id);
                got++;
            }
            if (got == 0) {
                sync_test::Backoff(spins);
            } else {
                pm_atomic_faa_size(&consumed, got);
            }
        }
    });

    EXPECT_TRUE(pm_lifo_is_empty(&lifo));
    std::vector<int> count(kTotal, 0);
    for (auto &seen : seen_by) {
        for (int id : seen) {
            ASSERT_GE(id, 0);
            ASSERT_LT(id, kTotal);
            count[id]++;
        }
    }
    for (int id = 0; id < kTotal; id++) ASSERT_EQ(count[id], 1) << "node " << id;
}

// Every thread repeatedly takes everything and pushes it back node by node, so nodes are
// popped and re-pushed while other pushes that read them as head are still in flight.
// Conservation: at the end each of the kNodes nodes is in the lifo exactly once.
TEST(SyncLifoContended, RecyclingNodesLosesAndDuplicatesNothing) {
    constexpr int kNodes = 64;
    constexpr int kRounds = 1500;
    std::vector<Item> items(kNodes);
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    for (int i = 0; i < kNodes; i++) {
        items[i].id = i;
        pm_lifo_push(&lifo, &items[i].node);
    }
    RunThreads(sync_test::kThreads, [&](int) {
        for (int r = 0; r < kRounds; r++) {
            pm_lifo_node *n = pm_lifo_pop_all(&lifo);
            while (n != nullptr) {
                pm_lifo_node *next = pm_lifo_node_next(n);
                pm_lifo_push(&lifo, n);
                n = next;
            }
        }
    });
    std::vector<int> count(kNodes, 0);
    for (int id : Drain(&lifo)) {
        ASSERT_GE(id, 0);
        ASSERT_LT(id, kNodes);
        count[id]++;
    }
    for (int id = 0; id < kNodes; id++) EXPECT_EQ(count[id], 1) << "node " << id;
}

}  // namespace
