// Helpers for binding the native core's plain structs as Python classes: pointer fields
// cross as Python ints (0 for "absent"), so Python code never builds a pointer object.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

namespace gradfast::bindings {

template <typename P>
const P* as_const_ptr(intptr_t v) { return reinterpret_cast<const P*>(v); }

// A read-write property `name` of class `cls` for the pointer member `member`.
template <typename S, typename P>
void def_pointer(pybind11::class_<S>& cls, const char* name, const P* S::*member) {
  cls.def_property(
      name, [member](const S& s) { return reinterpret_cast<intptr_t>(s.*member); },
      [member](S& s, intptr_t v) { s.*member = reinterpret_cast<const P*>(v); });
}

}  // namespace gradfast::bindings
