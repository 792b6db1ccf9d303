/* startup.S: vector table and reset handler of the qcore check firmware (Cortex-M4F on
 * QEMU's mps2-an386). The reset handler enables the FPU (CPACR: CP10/CP11 full access)
 * before any C code can touch a floating-point register, then calls fw_start (fw_mcu.c),
 * which copies .data, zeroes .bss, paints the stack and runs main. */
    .syntax unified
    .cpu cortex-m4
    .thumb

    .section .vectors, "a"
    .align 2
    .global fw_vectors
fw_vectors:
    .word __stack_top           /* initial stack pointer */
    .word fw_reset              /* reset */
    .word fw_fault              /* NMI */
    .word fw_fault              /* hard fault */
    .word fw_fault              /* memory management fault */
    .word fw_fault              /* bus fault */
    .word fw_fault              /* usage fault */
    .word 0, 0, 0, 0            /* reserved */
    .word fw_fault              /* SVCall */
    .word fw_fault              /* debug monitor */
    .word 0                     /* reserved */
    .word fw_fault              /* PendSV */
    .word fw_fault              /* SysTick (not enabled) */

    .text
    .thumb_func
    .global fw_reset
fw_reset:
    ldr r0, =0xE000ED88         /* SCB->CPACR */
    ldr r1, [r0]
    orr r1, r1, #(0xF << 20)
    str r1, [r0]
    dsb
    isb
    bl fw_start
1:  b 1b

    .thumb_func
    .weak fw_fault
fw_fault:
    ldr r0, =0x18               /* semihosting SYS_EXIT */
    ldr r1, =0x20023            /* ADP_Stopped_RunTimeErrorUnknown: QEMU exits with 1 */
    bkpt 0xAB
2:  b 2b

    /* fw_count_loop(n): exactly 2 n + 2 instructions from the first one to the return
     * (mov, then n times subs + bne, then bx), for checking the instruction counter. */
    .thumb_func
    .global fw_count_loop
fw_count_loop:
    mov r1, r0
3:  subs r1, r1, #1
    bne 3b
    bx lr
