# Compiler flags per build type.  Warnings are errors everywhere.
#
# Sanitizer flags are carried by two interface libraries rather than set
# globally, so the Test build can hold ASan+UBSan binaries and TSan twins of
# the concurrency tests side by side (one ctest run, one summary line):
#   strata_flags        the build type's own instrumentation
#   strata_flags_tsan   ThreadSanitizer (Test build twins only)
add_compile_options(-Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
                    -Wstrict-prototypes -Wmissing-prototypes -fno-strict-aliasing)
add_compile_definitions(_GNU_SOURCE STRATA_VERSION="${PROJECT_VERSION}")

set(CMAKE_C_FLAGS_RELEASE "-O2 -g -DNDEBUG")
set(CMAKE_C_FLAGS_TEST "-O1 -g")
set(CMAKE_C_FLAGS_TSAN "-O1 -g")
set(CMAKE_C_FLAGS_FUZZ "-O1 -g")
set(CMAKE_C_FLAGS_DEBUG "-O0 -g")

set(_asan -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
set(_tsan -fsanitize=thread -fno-omit-frame-pointer)

add_library(strata_flags INTERFACE)
add_library(strata_flags_tsan INTERFACE)
target_compile_options(strata_flags_tsan INTERFACE ${_tsan})
target_link_options(strata_flags_tsan INTERFACE ${_tsan})

string(TOUPPER "${CMAKE_BUILD_TYPE}" _bt)
set(STRATA_TSAN_TWINS OFF)
if(_bt STREQUAL "TEST")
  target_compile_options(strata_flags INTERFACE ${_asan})
  target_link_options(strata_flags INTERFACE ${_asan})
  set(STRATA_TSAN_TWINS ON)
elseif(_bt STREQUAL "TSAN")
  target_compile_options(strata_flags INTERFACE ${_tsan})
  target_link_options(strata_flags INTERFACE ${_tsan})
elseif(_bt STREQUAL "FUZZ")
  if(NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "Fuzz builds need clang-14: cmake -DCMAKE_C_COMPILER=clang-14")
  endif()
  target_compile_options(strata_flags INTERFACE
    -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  target_link_options(strata_flags INTERFACE -fsanitize=address,undefined)
elseif(NOT _bt MATCHES "^(RELEASE|DEBUG)$")
  message(FATAL_ERROR "unknown CMAKE_BUILD_TYPE ${CMAKE_BUILD_TYPE}: Release, Test, Tsan, Fuzz, Debug")
endif()

# strata_variants(<name> <kind> <sources...> LINK <libs...>)
# Declares <name> (and <name>_tsan in the Test build) as a static library
# (kind STATIC) with the right sanitizer flags; LINK names are suffixed with
# _tsan for the twin when they are Strata targets (start with "strata").
function(strata_variants name)
  cmake_parse_arguments(A "" "" "SOURCES;LINK;INCLUDE" ${ARGN})
  set(variants "")
  list(APPEND variants "${name}|strata_flags|")
  if(STRATA_TSAN_TWINS)
    list(APPEND variants "${name}_tsan|strata_flags_tsan|_tsan")
  endif()
  foreach(v ${variants})
    string(REPLACE "|" ";" parts "${v}")
    list(GET parts 0 tgt)
    list(GET parts 1 flags)
    list(LENGTH parts np)
    set(sfx "")
    if(np GREATER 2)
      list(GET parts 2 sfx)
    endif()
    if(A_SOURCES)
      add_library(${tgt} STATIC ${A_SOURCES})
      if(sfx)
        # TSan twins are built only when a tsan-labelled test links them.
        set_target_properties(${tgt} PROPERTIES EXCLUDE_FROM_ALL ON)
      endif()
      set(pub PUBLIC)
      target_include_directories(${tgt} PRIVATE ${A_INCLUDE})
    else()
      add_library(${tgt} INTERFACE) # a layer with no sources yet
      set(pub INTERFACE)
    endif()
    target_include_directories(${tgt} ${pub} ${PROJECT_SOURCE_DIR}/include)
    set(libs "")
    foreach(l ${A_LINK})
      if(l MATCHES "^strata_" AND NOT l MATCHES "^strata_flags")
        list(APPEND libs "${l}${sfx}")
      else()
        list(APPEND libs "${l}")
      endif()
    endforeach()
    target_link_libraries(${tgt} ${pub} ${flags} ${libs})
  endforeach()
endfunction()
