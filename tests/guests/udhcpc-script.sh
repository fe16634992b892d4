#!/bin/sh
# udhcpc hook: configure the address, route and resolver it was given.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    [ -n "$dns" ] && for d in $dns; do echo "nameserver $d"; done > /etc/resolv.conf
    ;;
  deconfig)
    ip addr flush dev "$interface"
    ;;
esac
exit 0
