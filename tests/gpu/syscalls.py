"""The system calls a traced worker made after its seccomp filter went on (tests/gpu/syscalls.sh):
per strace file, every call's count, ioctl requests and paths opened."""
import re,sys,glob,collections
files=glob.glob(sys.argv[1]+'/strace.*')
for f in files:
    lines=open(f,errors='replace').read().split('\n')
    t_seal=None
    rows=[]
    for l in lines:
        m=re.match(r'(\d+)\s+(\d+\.\d+)\s+(.*)',l)
        if not m: continue
        pid,ts,rest=m.group(1),float(m.group(2)),m.group(3)
        if rest.startswith('seccomp(SECCOMP_SET_MODE_FILTER'):
            t_seal=ts
        rows.append((pid,ts,rest))
    if t_seal is None:
        print(f, 'no seccomp call'); continue
    after=collections.Counter(); ioctls=collections.Counter(); opens=collections.Counter()
    for pid,ts,rest in rows:
        if ts<=t_seal: continue
        m=re.match(r'<\.\.\. (\w+) resumed>',rest)
        if m: continue
        m=re.match(r'(\w+)\((.*)',rest)
        if not m: continue
        name=m.group(1); after[name]+=1
        if name=='ioctl':
            a=m.group(2).split(',')
            ioctls[a[1].strip() if len(a)>1 else '?']+=1
        if name in ('openat','open'):
            opens[m.group(2)[:80]]+=1
    print('==',f,'lines',len(rows))
    print('after seal:',dict(after.most_common()))
    print('ioctl requests:',dict(ioctls.most_common(40)))
    print('opens:',dict(opens.most_common(20)))
