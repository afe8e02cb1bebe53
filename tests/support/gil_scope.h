// gil_scope.h — holds the modelled GIL for a C++ scope, for tests.
//
// The mem and object entry points require the GIL (PM_GIL_REQUIRED), and clang's
// -Wthread-safety checks that every caller holds it. A test body opens with
// `GilScope gil;`: the analysis sees the capability acquired for the scope and released on
// every way out of it, ASSERT_* early returns included, and at run time the debug hooks'
// GIL check is satisfied too.
#ifndef PM_TESTS_SUPPORT_GIL_SCOPE_H
#define PM_TESTS_SUPPORT_GIL_SCOPE_H

#include "gil/gil.h"

class PM_SCOPED_CAPABILITY GilScope {
  public:
    GilScope() PM_ACQUIRE(pm_gil) { pm_gil_acquire(); }
    ~GilScope() PM_RELEASE() { pm_gil_release(); }
    GilScope(const GilScope &) = delete;
    GilScope &operator=(const GilScope &) = delete;
};

#endif  // PM_TESTS_SUPPORT_GIL_SCOPE_H
