// tests/sync_publish_test.cc — message passing: one thread writes PLAIN (non-atomic) data
// and publishes it through a sync/ primitive; another observes the publication and reads
// the plain data. Each test checks the values (ordering on real hardware) and, under
// --config=tsan, that TSan sees the happens-before edge: these are the tests that fail
// with "data race" if an annotation in sync/ is missing or misplaced, because ck's
// operations are invisible to TSan (shared/BUILDING.md).
//
// The writer writes its data only after both threads exist, so thread creation gives no
// edge between the write and the read; only the primitive under test can.
#include <gtest/gtest.h>

#include <stddef.h>
#include <stdint.h>

#include <thread>
#include <vector>

#include "sync/sync.h"
#include "tests/sync_test_util.h"

namespace {

using sync_test::Backoff;

constexpr int kMessages = 200;

struct Message {
    pm_lifo_node node;  // used only by the lifo variant
    uint64_t a;
    uint64_t b;
    char text[24];
};

void Fill(Message *m, int i) {
    m->a = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15u;
    m->b = ~m->a;
    for (size_t k = 0; k < sizeof m->text; k++) m->text[k] = static_cast<char>('a' + (i + k) % 26);
}

void Check(const Message *m, int i) {
    EXPECT_EQ(m->a, static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15u) << "message " << i;
    EXPECT_EQ(m->b, ~m->a) << "message " << i;
    for (size_t k = 0; k < sizeof m->text; k++) {
        ASSERT_EQ(m->text[k], static_cast<char>('a' + (i + k) % 26)) << "message " << i;
    }
}

// pm_atomic_store_ptr_release -> pm_atomic_load_ptr_acquire, one slot per message.
TEST(SyncPublish, PointerStoreReleaseLoadAcquire) {
    std::vector<Message> messages(kMessages);
    std::vector<Message *> slots(kMessages, nullptr);
    std::thread reader([&] {
        for (int i = 0; i < kMessages; i++) {
            Message *m;
            unsigned spins = 0;
            while ((m = static_cast<Message *>(pm_atomic_load_ptr_acquire(&slots[i]))) == nullptr) Backoff(spins);
            ASSERT_EQ(m, &messages[i]);
            Check(m, i);
        }
    });
    std::thread writer([&] {
        for (int i = 0; i < kMessages; i++) {
            Fill(&messages[i], i);
            pm_atomic_store_ptr_release(&slots[i], &messages[i]);
        }
    });
    writer.join();
    reader.join();
}

// pm_lifo_push -> pm_lifo_pop_all: the payload and the node's own link are both plain.
TEST(SyncPublish, LifoPushPopAll) {
    std::vector<Message> messages(kMessages);
    pm_lifo lifo = PM_LIFO_INITIALIZER;
    std::thread reader([&] {
        std::vector<int> seen(kMessages, 0);
        int received = 0;
        unsigned spins = 0;
        while (received < kMessages) {
            pm_lifo_node *n = pm_lifo_pop_all(&lifo);
            if (n == nullptr) {
                Backoff(spins);
                continue;
            }
            for (; n != nullptr; n = pm_lifo_node_next(n)) {
                Message *m = reinterpret_cast<Message *>(n);
                int i = static_cast<int>(m - messages.data());
                ASSERT_GE(i, 0);
                ASSERT_LT(i, kMessages);
                Check(m, i);
                seen[i]++;
                received++;
            }
        }
        for (int i = 0; i < kMessages; i++) EXPECT_EQ(seen[i], 1) << "message " << i;
    });
    std::thread writer([&] {
        for (int i = 0; i < kMessages; i++) {
            Fill(&messages[i], i);
            pm_lifo_push(&lifo, &messages[i].node);
        }
    });
    writer.join();
    reader.join();
}

// One mailbox: the writer publishes with pm_atomic_cas_ptr (NULL -> message), the reader
// takes with pm_atomic_swap_ptr (message -> NULL). Both RMWs must order.
TEST(SyncPublish, CasPublishSwapTake) {
    std::vector<Message> messages(kMessages);
    Message *mailbox = nullptr;
    std::thread reader([&] {
        for (int i = 0; i < kMessages; i++) {
            Message *m;
            unsigned spins = 0;
            while ((m = static_cast<Message *>(pm_atomic_swap_ptr(&mailbox, nullptr))) == nullptr) Backoff(spins);
            ASSERT_EQ(m, &messages[i]);
            Check(m, i);
        }
    });
    std::thread writer([&] {
        for (int i = 0; i < kMessages; i++) {
            Fill(&messages[i], i);
            unsigned spins = 0;
            while (!pm_atomic_cas_ptr(&mailbox, nullptr, &messages[i])) Backoff(spins);
        }
    });
    writer.join();
    reader.join();
}

// A published count: pm_atomic_faa_size (acq_rel) -> pm_atomic_load_size_acquire.
TEST(SyncPublish, SizeFetchAddLoadAcquire) {
    std::vector<Message> messages(kMessages);
    size_t published = 0;
    std::thread reader([&] {
        for (int i = 0; i < kMessages; i++) {
            unsigned spins = 0;
            while (pm_atomic_load_size_acquire(&published) <= static_cast<size_t>(i)) Backoff(spins);
            Check(&messages[i], i);
        }
    });
    std::thread writer([&] {
        for (int i = 0; i < kMessages; i++) {
            Fill(&messages[i], i);
            pm_atomic_faa_size(&published, 1);
        }
    });
    writer.join();
    reader.join();
}

// Per-message int flags: pm_atomic_store_int_release -> pm_atomic_load_int_acquire, and
// pm_atomic_store_size_release for the final count.
TEST(SyncPublish, IntAndSizeStoreReleaseLoadAcquire) {
    std::vector<Message> messages(kMessages);
    std::vector<int> ready(kMessages, 0);
    size_t done = 0;
    uint64_t checksum = 0;  // plain, published by the final size store
    std::thread reader([&] {
        for (int i = 0; i < kMessages; i++) {
            unsigned spins = 0;
            while (pm_atomic_load_int_acquire(&ready[i]) == 0) Backoff(spins);
            Check(&messages[i], i);
        }
        unsigned spins = 0;
        while (pm_atomic_load_size_acquire(&done) == 0) Backoff(spins);
        EXPECT_EQ(checksum, static_cast<uint64_t>(kMessages) * (kMessages - 1) / 2);
    });
    std::thread writer([&] {
        for (int i = 0; i < kMessages; i++) {
            Fill(&messages[i], i);
            pm_atomic_store_int_release(&ready[i], 1);
            checksum += static_cast<uint64_t>(i);
        }
        pm_atomic_store_size_release(&done, 1);
    });
    writer.join();
    reader.join();
}

// A plain counter handed back and forth under a pm_spinlock: the lock's unlock -> lock
// edge is what TSan must see (via the __tsan_mutex_* annotations).
TEST(SyncPublish, SpinlockHandOff) {
    pm_spinlock lock = PM_SPINLOCK_INITIALIZER;
    Message shared{};
    int turn = 0;  // protected by `lock`; 0: writer's turn, 1: reader's turn
    constexpr int kRounds = 100;
    std::thread reader([&] {
        for (int i = 0; i < kRounds; i++) {
            unsigned spins = 0;
            bool done = false;
            while (!done) {
                pm_spinlock_lock(&lock);
                if (turn == 1) {
                    Check(&shared, i);
                    turn = 0;
                    done = true;
                }
                pm_spinlock_unlock(&lock);
                if (!done) Backoff(spins);
            }
        }
    });
    std::thread writer([&] {
        for (int i = 0; i < kRounds; i++) {
            unsigned spins = 0;
            bool done = false;
            while (!done) {
                pm_spinlock_lock(&lock);
                if (turn == 0) {
                    Fill(&shared, i);
                    turn = 1;
                    done = true;
                }
                pm_spinlock_unlock(&lock);
                if (!done) Backoff(spins);
            }
        }
    });
    writer.join();
    reader.join();
}

}  // namespace
