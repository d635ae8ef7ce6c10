# One warning policy for all qad targets (not for third-party headers, which are -isystem).
add_library(qad_warnings INTERFACE)
target_compile_options(qad_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
