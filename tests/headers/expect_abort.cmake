# SPDX-License-Identifier: Apache-2.0
# Runs PROGRAM with no arguments; passes if it exits abnormally and stderr carries the message.
execute_process(COMMAND "${PROGRAM}" RESULT_VARIABLE result ERROR_VARIABLE err OUTPUT_VARIABLE out)
if(result EQUAL 0)
  message(FATAL_ERROR "expected an abort, got exit 0; stdout: ${out}")
endif()
if(NOT err MATCHES "reparam: reparam::split_rows_part: parts 0 must be >= 1")
  message(FATAL_ERROR "abort message missing; stderr: ${err}")
endif()
if(out MATCHES "not reached")
  message(FATAL_ERROR "execution continued after the failed check")
endif()
