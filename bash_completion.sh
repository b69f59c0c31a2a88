# TAB completion for qpy:  source bash_completion.sh  (in ~/.bashrc)
# `qpy <command> ? <TAB><TAB>` prints a one-line reminder of what the command does.

_qpy_help() {
    case "$1" in
        sub)       echo "Submit a job: qpy sub [-n cores] [-m GB] [-g GPUs] [-t time] [-a attrs] [-N name] [--array 1-10] [--after(ok) IDs] [-c|-o] <command>, or --file <one command per line>" ;;
        check)     echo "Check the jobs: statuses, directories, IDs or ranges (any of them)" ;;
        kill)      echo "Kill the required jobs: IDs or ranges, queue, running, a directory, all" ;;
        clean)     echo "Remove finished jobs: IDs or ranges, done, failed, killed, undone, all" ;;
        status)    echo "Show the users, nodes and cores in use" ;;
        config)    echo "Show or change your settings: qpy config <keyword> <value>" ;;
        ctrlQueue) echo "Control the queue: pause, continue, jump <IDs> <target|begin|end>" ;;
        tutorial)  echo "Show the tutorial, optionally at a pattern" ;;
        notes)     echo "Read or add notes: qpy notes [<ID> [<text>]]" ;;
        restart)   echo "Make qpy ready and resume your queue" ;;
        finish)    echo "Stop starting your queued jobs until qpy restart" ;;
        wait)      echo "Wait until jobs end; exit status 0 if all are done" ;;
        tail)      echo "Follow the output of a job until it ends" ;;
        hold)      echo "Keep queued jobs from starting: IDs or ranges, a directory, all" ;;
        release)   echo "Let held jobs start: IDs or ranges, a directory, all" ;;
        rerun)     echo "Submit ended jobs again: IDs or ranges, done, failed, killed, undone, a directory, all [--parsable]" ;;
        history)   echo "Jobs that ended, cleaned or not: [--since 7d] [--until <date>] [--name <pattern>] [filters]" ;;
        *)         echo "Unknown command: $1" ;;
    esac
}

_qpy_ids() {  # the user's own job IDs: one read of the DB, no tick
    "${COMP_WORDS[0]}" _ids "$1" 2>/dev/null
}

_qpy_words() {  # the words qpy itself defines: its commands, statuses, config keys...
    "${COMP_WORDS[0]}" _words "$1" 2>/dev/null
}

_qpy_unused() {  # these words, but not those already on the line (a flag is given once)
    local word given
    for word in "$@"; do
        for given in "${COMP_WORDS[@]:2:$((COMP_CWORD - 2))}"; do
            [ "$given" = "$word" ] && continue 2
        done
        printf '%s ' "$word"
    done
}

_qpy() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmd=${COMP_WORDS[1]}
    COMPREPLY=()
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "$(_qpy_words commands)" -- "$cur"))
        return
    fi
    local w
    for w in "${COMP_WORDS[@]:2}"; do
        if [ "$w" = "?" ]; then
            # two entries, so bash lists them instead of inserting one
            COMPREPLY=("$(_qpy_help "$cmd")"
                       "--- For the options: qpy help $cmd; for more: qpy tutorial $cmd")
            return
        fi
    done
    local prev=${COMP_WORDS[COMP_CWORD-1]}
    case "$cmd" in
        sub)
            # options come before the command; after it, complete file names
            local i valued="-n -m -a -g -t -N --cores --mem --node_attr --gpus --time --name --after --afterok --afternotok --array -D --chdir --output --error --file --stage-in --stage-out"
            for ((i = 2; i < COMP_CWORD; i++)); do
                if [[ "${COMP_WORDS[i]}" != -* ]] && [[ " $valued " != *" ${COMP_WORDS[i-1]} "* ]]; then
                    COMPREPLY=($(compgen -f -- "$cur"))
                    return
                fi
            done
            if [[ "$prev" == --file || "$prev" == --output || "$prev" == --error \
                  || "$prev" == --stage-in ]]; then
                COMPREPLY=($(compgen -f -- "$cur"))
            elif [[ "$prev" == -D || "$prev" == --chdir ]]; then
                COMPREPLY=($(compgen -d -- "$cur"))
            elif [[ " $valued " == *" $prev "* ]]; then
                return
            elif [[ "$cur" == -* ]]; then
                COMPREPLY=($(compgen -W "$valued -c -o --copyScript --originalScript --requeue \
                    --parsable --wait --help" -- "$cur"))
            else
                COMPREPLY=($(compgen -c -- "$cur") $(compgen -f -- "$cur"))
            fi ;;
        check) COMPREPLY=($(compgen -W "$(_qpy_words statuses) $(_qpy_unused --json) \
                            $(_qpy_ids all)" -- "$cur") $(compgen -d -- "$cur")) ;;
        status) COMPREPLY=($(compgen -W "$(_qpy_unused --json)" -- "$cur")) ;;
        history)
            case "$prev" in
                --since|--until|--name|--user) return ;;
            esac
            COMPREPLY=($(compgen -W "done failed killed undone $(_qpy_unused --json --since \
                --until --name --user --all) $(_qpy_ids finished)" -- "$cur") \
                $(compgen -d -- "$cur")) ;;
        kill)  COMPREPLY=($(compgen -W "all queue running $(_qpy_ids live)" -- "$cur")) ;;
        hold|release) COMPREPLY=($(compgen -W "all $(_qpy_ids live)" -- "$cur")
                                 $(compgen -d -- "$cur")) ;;
        clean) COMPREPLY=($(compgen -W "all done failed killed undone $(_qpy_ids finished)" \
                            -- "$cur") $(compgen -d -- "$cur")) ;;
        rerun) COMPREPLY=($(compgen -W "all done failed killed undone $(_qpy_unused --parsable) \
                            $(_qpy_ids finished)" -- "$cur") $(compgen -d -- "$cur")) ;;
        wait|tail|notes) COMPREPLY=($(compgen -W "$(_qpy_ids all)" -- "$cur")) ;;
        tutorial) COMPREPLY=($(compgen -W "$(_qpy_words commands)" -- "$cur")) ;;
        ctrlQueue)
            if [ "$COMP_CWORD" -eq 2 ]; then
                COMPREPLY=($(compgen -W "pause continue jump" -- "$cur"))
            elif [ "${COMP_WORDS[2]}" = jump ] && [ "$COMP_CWORD" -eq 3 ]; then
                COMPREPLY=($(compgen -W "$(_qpy_ids live)" -- "$cur"))
            elif [ "${COMP_WORDS[2]}" = jump ] && [ "$COMP_CWORD" -gt 3 ]; then
                COMPREPLY=($(compgen -W "begin end $(_qpy_ids live)" -- "$cur"))
            fi ;;
        config)
            if [ "$COMP_CWORD" -eq 2 ]; then
                COMPREPLY=($(compgen -W "$(_qpy_words config)" -- "$cur"))
            else
                case "${COMP_WORDS[2]}" in
                    colour|copyScripts)
                        [ "$COMP_CWORD" -eq 3 ] && COMPREPLY=($(compgen -W "true false default" -- "$cur")) ;;
                    coloursScheme)
                        [ "$COMP_CWORD" -le 8 ] && COMPREPLY=($(compgen -W "grey red green yellow \
                            blue magenta cyan white default" -- "$cur")) ;;
                    checkFMT) [ "$COMP_CWORD" -eq 3 ] && COMPREPLY=($(compgen -W "default" -- "$cur")) ;;
                    *) [ "$COMP_CWORD" -eq 3 ] && COMPREPLY=($(compgen -W "default" -- "$cur")) ;;
                esac
            fi ;;
    esac
}

complete -F _qpy qpy

_qpy_admin() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    COMPREPLY=()
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "$(_qpy_words commands)" -- "$cur"))
        return
    fi
    if [ "$cur" = "?" ] || [ "${COMP_WORDS[COMP_CWORD-1]}" = "?" ]; then
        # the line of 'qpy_admin.py --help' that describes this command, and a hint
        COMPREPLY=("$("${COMP_WORDS[0]}" --help 2>/dev/null | grep -m1 "^  ${COMP_WORDS[1]} " |
                      sed 's/^  *//; s/  */ /g')"
                   "--- For all commands: ${COMP_WORDS[0]} --help")
        return
    fi
    case "${COMP_WORDS[1]}" in
        set) [ "$COMP_CWORD" -eq 2 ] && COMPREPLY=($(compgen -W "$(_qpy_words settings)" \
                -- "$cur")) ;;
        timer) COMPREPLY=($(compgen -W "--install --dir= --report= --report-every=" -- "$cur")) ;;
        report) COMPREPLY=($(compgen -W "--html= --refresh=" -- "$cur")) ;;
        add) if [ "$COMP_CWORD" -ge 3 ]; then  # a node's settings, as in the nodes file
                 # (the keys are qpy's: the qpy next to this qpy-admin knows them)
                 COMPREPLY=($(compgen -W "$("$(dirname "${COMP_WORDS[0]}")/qpy" _words \
                     node-keys 2>/dev/null || qpy _words node-keys 2>/dev/null)" -- "$cur"))
                 compopt -o nospace 2>/dev/null
             fi ;;
        drain|resume|remove) [ "$COMP_CWORD" -eq 2 ] && COMPREPLY=($(compgen -W \
                "$("${COMP_WORDS[0]}" list 2>/dev/null | cut -d' ' -f1)" -- "$cur")) ;;
        create|nodes|users|distribute|backup|restore) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}

complete -F _qpy_admin qpy-admin qpy_admin.py
