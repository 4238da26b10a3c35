# A REPL's definitions that a checkpoint keeps (a million-row DataFrame, a
# function, a class, a lambda) and those it cannot (a socket, an open file).
import pandas as pd, socket
df = pd.DataFrame({'a': range(10**6)})
def f(x):
    return x * 2
class K:
    def __init__(self):
        self.v = 7
lam = lambda y: y + 1
sock = socket.socket()
fh = open('f.txt', 'w')
