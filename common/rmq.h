/*
 * rmq.h - include librabbitmq whatever its version.
 *
 * librabbitmq 0.12 moved its headers from <amqp.h> to <rabbitmq-c/amqp.h>;
 * Debian 12 ships 0.11. CMake detects which layout is installed and defines
 * RT_HAVE_RABBITMQ_C_DIR for the new one. Include this file, never amqp.h.
 */
#ifndef RT_RMQ_H
#define RT_RMQ_H

#ifdef RT_HAVE_RABBITMQ_C_DIR
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/ssl_socket.h>
#include <rabbitmq-c/tcp.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif

#endif
