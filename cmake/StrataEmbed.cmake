# strata_embed_files(<out-var> <symbol-prefix> <files...>)
# Generates one C source that embeds text files (Lua scripts, the dashboard
# page) so the binary needs nothing from the source tree at run time, and
# returns its path in <out-var> (add it to a target's sources).  The source
# defines `const strata_embedded <prefix>_table[]` (see strata/embedded.h),
# terminated by an all-zero row.  With no files it sets <out-var> empty.
function(strata_embed_files outvar prefix)
  if(NOT ARGN)
    set(${outvar} "" PARENT_SCOPE)
    return()
  endif()
  set(out "${CMAKE_CURRENT_BINARY_DIR}/${prefix}_embedded.c")
  # A ';' list would be split into separate arguments by add_custom_command:
  # pass it '|'-joined and split it again in embed.cmake.
  string(REPLACE ";" "|" _files "${ARGN}")
  add_custom_command(
    OUTPUT "${out}"
    COMMAND ${CMAKE_COMMAND} -DOUT=${out} -DPREFIX=${prefix} "-DFILES=${_files}"
            -P "${PROJECT_SOURCE_DIR}/cmake/embed.cmake"
    DEPENDS ${ARGN} "${PROJECT_SOURCE_DIR}/cmake/embed.cmake"
    COMMENT "Embedding ${prefix} files"
    VERBATIM)
  set(${outvar} "${out}" PARENT_SCOPE)
endfunction()
